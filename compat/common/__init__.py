"""Code the Python compatibility suites (compat/kafka, compat/amqp) share:
the broker process (`common.broker`) and the pytest plugin that reports its
log (`common.broker_log`). Each suite's pytest.ini puts compat/ on sys.path.
"""
