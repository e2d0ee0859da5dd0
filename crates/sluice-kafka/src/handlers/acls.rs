//! CreateAcls, DescribeAcls and DeleteAcls, and the check every other
//! handler makes with [`Context::allowed`]: Kafka's ACLs, kept as metadata
//! (see [`sluice_core::acls`] for the rules). With `kafka.acls` off every
//! client may do everything, and the three APIs answer SECURITY_DISABLED
//! as Kafka does without an authorizer.
//!
//! A connection's principal is `User:NAME` once it logged in with SASL,
//! `User:ANONYMOUS` otherwise; super users (`kafka.super_users`, and the
//! broker's users tagged `administrator`) and other nodes on the
//! inter-node link pass every check.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::create_acls_response::AclCreationResult;
use kafka_protocol::messages::delete_acls_response::{
    DeleteAclsFilterResult, DeleteAclsMatchingAcl,
};
use kafka_protocol::messages::describe_acls_response::{AclDescription, DescribeAclsResource};
use kafka_protocol::messages::{
    CreateAclsRequest, CreateAclsResponse, DeleteAclsRequest, DeleteAclsResponse,
    DescribeAclsRequest, DescribeAclsResponse,
};
use kafka_protocol::protocol::StrBytes;
use std::sync::Arc;

use sluice_core::acls::{
    AclBinding, AclFilter, Acls, CLUSTER_NAME, Operation, PatternFilter, PatternType, Permission,
    Requester, ResourceType,
};

use super::{Context, blocking};

/// The principal of a connection that did not log in.
pub(crate) const ANONYMOUS: &str = "User:ANONYMOUS";

/// How a listener authorizes, when `kafka.acls` is on.
#[derive(Debug, Clone, Default)]
pub struct AuthorizerOptions {
    /// Principals that pass every check (`super.users`).
    pub super_users: Vec<String>,
    /// Whether a resource no ACL names is open (`allow.everyone.if.no.acl.found`).
    pub everyone_if_none: bool,
}

/// A connection's authorization, owned, for work off the runtime.
#[derive(Debug, Clone, Default)]
pub(crate) struct Checker {
    /// `None`: everything is allowed (no authorizer, a super user, or
    /// another node).
    rules: Option<Arc<Rules>>,
}

#[derive(Debug)]
struct Rules {
    acls: Arc<Acls>,
    principal: String,
    host: String,
    everyone_if_none: bool,
}

impl Checker {
    /// Whether the connection may do `operation` on the resource `name`
    /// of type `resource`.
    pub(crate) fn allows(&self, operation: Operation, resource: ResourceType, name: &str) -> bool {
        self.rules.as_ref().is_none_or(|rules| {
            rules.acls.authorize(
                Requester {
                    principal: &rules.principal,
                    host: &rules.host,
                },
                operation,
                resource,
                name,
                rules.everyone_if_none,
            )
        })
    }

    /// [`Checker::allows`] on the cluster resource.
    pub(crate) fn allows_on_cluster(&self, operation: Operation) -> bool {
        self.allows(operation, ResourceType::Cluster, CLUSTER_NAME)
    }

    /// Whether the connection may do `operation` on some resource of type
    /// `resource` (an idempotent producer's WRITE on any topic, as Kafka
    /// allows instead of IDEMPOTENT_WRITE on the cluster).
    pub(crate) fn allows_on_any(&self, operation: Operation, resource: ResourceType) -> bool {
        self.rules.as_ref().is_none_or(|rules| {
            rules.acls.authorize_any(
                Requester {
                    principal: &rules.principal,
                    host: &rules.host,
                },
                operation,
                resource,
                rules.everyone_if_none,
            )
        })
    }

    /// The error for a config resource (Kafka's ConfigResource type
    /// `resource_type`: topic 2, broker 4, group 32) the client may not
    /// describe or alter (`operation` DESCRIBE_CONFIGS or ALTER_CONFIGS),
    /// `None` when it may.
    pub(crate) fn config_denied(
        &self,
        resource_type: i8,
        name: &str,
        operation: Operation,
    ) -> Option<ResponseError> {
        use ResponseError as E;
        let (resource, name, error) = match resource_type {
            2 => (ResourceType::Topic, name, E::TopicAuthorizationFailed),
            32 => (ResourceType::Group, name, E::GroupAuthorizationFailed),
            _ => (
                ResourceType::Cluster,
                CLUSTER_NAME,
                E::ClusterAuthorizationFailed,
            ),
        };
        (!self.allows(operation, resource, name)).then_some(error)
    }
}

impl Context {
    /// This connection's authorization.
    pub(crate) fn checker(&self) -> Checker {
        let Some(authorizer) = &self.options.authorizer else {
            return Checker::default();
        };
        if self.inter_node {
            return Checker::default();
        }
        let user = self.user();
        let principal = principal_of(user.as_deref());
        // Only a user who logged in with its password is an
        // administrator: a certificate's name is no user's login.
        let administrator = self.sasl_gated()
            && user
                .as_deref()
                .is_some_and(|name| self.broker.users().has_tag(name, "administrator"));
        if administrator || authorizer.super_users.contains(&principal) {
            return Checker::default();
        }
        Checker {
            rules: Some(Arc::new(Rules {
                acls: Arc::clone(self.broker.acls()),
                principal,
                host: self.peer.trim_start_matches('/').to_owned(),
                everyone_if_none: authorizer.everyone_if_none,
            })),
        }
    }

    /// Whether this connection may do `operation` on the resource `name`
    /// of type `resource`: always without an authorizer.
    pub(crate) fn allowed(&self, operation: Operation, resource: ResourceType, name: &str) -> bool {
        self.options.authorizer.is_none() || self.checker().allows(operation, resource, name)
    }

    /// [`Context::allowed`] on the cluster resource.
    pub(crate) fn allowed_on_cluster(&self, operation: Operation) -> bool {
        self.allowed(operation, ResourceType::Cluster, CLUSTER_NAME)
    }

    /// Why a KIP-848 or share-group heartbeat is refused, if it is: READ
    /// on the group, DESCRIBE on each subscribed topic (the fetches check
    /// READ), as Kafka asks.
    pub(crate) fn heartbeat_denied(
        &self,
        group: &str,
        subscribed: Option<&[kafka_protocol::messages::TopicName]>,
    ) -> Option<(ResponseError, Option<String>)> {
        let checker = self.checker();
        if !checker.allows(Operation::Read, ResourceType::Group, group) {
            return Some((ResponseError::GroupAuthorizationFailed, None));
        }
        let denied = subscribed
            .unwrap_or_default()
            .iter()
            .find(|t| !checker.allows(Operation::Describe, ResourceType::Topic, t))?;
        Some((
            ResponseError::TopicAuthorizationFailed,
            Some(format!(
                "not authorized to describe topic {}",
                denied.as_str()
            )),
        ))
    }
}

fn principal_of(user: Option<&str>) -> String {
    user.map_or_else(|| ANONYMOUS.to_owned(), |name| format!("User:{name}"))
}

fn text(value: impl Into<String>) -> StrBytes {
    StrBytes::from_string(value.into())
}

/// Kafka's answer to the ACL APIs without an authorizer.
const NO_AUTHORIZER: &str = "No Authorizer is configured.";

/// Why an ACL API is refused before it runs: no authorizer
/// (SECURITY_DISABLED, as Kafka), or not `operation` on the cluster
/// (`needs` says which).
fn refused(
    context: &Context,
    operation: Operation,
    needs: &'static str,
) -> Option<(ResponseError, &'static str)> {
    if context.options.authorizer.is_none() {
        return Some((ResponseError::SecurityDisabled, NO_AUTHORIZER));
    }
    (!context.allowed_on_cluster(operation))
        .then_some((ResponseError::ClusterAuthorizationFailed, needs))
}

/// The outcome of an ACL change run on the blocking pool.
fn finished<T>(
    done: Option<Result<T, sluice_core::CoreError>>,
) -> Result<T, sluice_core::CoreError> {
    done.unwrap_or_else(|| {
        Err(sluice_core::CoreError::Internal {
            reason: "the ACL change did not finish".to_owned(),
        })
    })
}

/// One ACL of a CreateAcls, checked as Kafka checks it.
fn binding(
    creation: &kafka_protocol::messages::create_acls_request::AclCreation,
) -> Result<AclBinding, String> {
    let resource_type = ResourceType::from_code(creation.resource_type).ok_or_else(|| {
        format!(
            "resource type {} is not one ACLs may name",
            creation.resource_type
        )
    })?;
    let pattern_type = PatternType::from_code(creation.resource_pattern_type).ok_or_else(|| {
        format!(
            "pattern type {} is not LITERAL (3) or PREFIXED (4)",
            creation.resource_pattern_type
        )
    })?;
    let operation = Operation::from_code(creation.operation).ok_or_else(|| {
        format!(
            "operation {} is not one an ACL may name",
            creation.operation
        )
    })?;
    let permission = Permission::from_code(creation.permission_type).ok_or_else(|| {
        format!(
            "permission {} is not DENY (2) or ALLOW (3)",
            creation.permission_type
        )
    })?;
    let name = creation.resource_name.to_string();
    if name.is_empty() {
        return Err("the resource name is empty".to_owned());
    }
    if resource_type == ResourceType::Cluster && name != CLUSTER_NAME {
        return Err(format!(
            "the only valid name for the CLUSTER resource is {CLUSTER_NAME}"
        ));
    }
    let principal = creation.principal.to_string();
    if principal.strip_prefix("User:").is_none_or(str::is_empty) {
        return Err(format!("the principal {principal:?} is not User:NAME"));
    }
    let host = creation.host.to_string();
    if host.is_empty() {
        return Err("the host is empty (\"*\" names every host)".to_owned());
    }
    Ok(AclBinding {
        resource_type,
        resource_name: name,
        pattern_type,
        principal,
        host,
        operation,
        permission,
    })
}

/// A DescribeAcls or DeleteAcls filter, from its wire fields.
fn filter(
    resource_type: i8,
    name: Option<&StrBytes>,
    pattern: i8,
    principal: Option<&StrBytes>,
    host: Option<&StrBytes>,
    operation: i8,
    permission: i8,
) -> Result<AclFilter, String> {
    const ANY: i8 = 1;
    const MATCH: i8 = 2;
    // Kafka's DELEGATION_TOKEN and USER resources, and its token
    // operations: valid in a filter, named by no ACL here.
    const NO_ACLS_RESOURCES: [i8; 2] = [6, 7];
    const NO_ACLS_OPERATIONS: [i8; 2] = [13, 14];
    let specific = |code: i8, what: &str| format!("the filter's {what} {code} is not valid");
    let nothing =
        NO_ACLS_RESOURCES.contains(&resource_type) || NO_ACLS_OPERATIONS.contains(&operation);
    Ok(AclFilter {
        nothing,
        resource_type: match resource_type {
            ANY => None,
            _ if nothing => None,
            code => {
                Some(ResourceType::from_code(code).ok_or_else(|| specific(code, "resource type"))?)
            }
        },
        resource_name: name.map(ToString::to_string),
        pattern: match pattern {
            ANY => PatternFilter::Any,
            MATCH => PatternFilter::Match,
            code => PatternFilter::Exactly(
                PatternType::from_code(code).ok_or_else(|| specific(code, "pattern type"))?,
            ),
        },
        principal: principal.map(ToString::to_string),
        host: host.map(ToString::to_string),
        operation: match operation {
            ANY => None,
            _ if nothing => None,
            code => Some(Operation::from_code(code).ok_or_else(|| specific(code, "operation"))?),
        },
        permission: match permission {
            ANY => None,
            code => Some(Permission::from_code(code).ok_or_else(|| specific(code, "permission"))?),
        },
    })
}

pub(crate) async fn create(context: &Context, request: CreateAclsRequest) -> CreateAclsResponse {
    if let Some((code, message)) = refused(
        context,
        Operation::Alter,
        "creating ACLs needs ALTER on the cluster",
    ) {
        let results = request
            .creations
            .iter()
            .map(|_| {
                AclCreationResult::default()
                    .with_error_code(code.code())
                    .with_error_message(Some(text(message)))
            })
            .collect();
        return CreateAclsResponse::default().with_results(results);
    }
    let checked: Vec<Result<AclBinding, String>> = request.creations.iter().map(binding).collect();
    let valid: Vec<AclBinding> = checked.iter().filter_map(|c| c.clone().ok()).collect();
    let broker = std::sync::Arc::clone(&context.broker);
    let committed = if valid.is_empty() {
        Ok(())
    } else {
        finished(blocking(move || broker.create_acls(valid)).await)
    };
    let results = checked
        .into_iter()
        .map(|checked| {
            let result = AclCreationResult::default();
            match (checked, &committed) {
                (Err(reason), _) => result
                    .with_error_code(ResponseError::InvalidRequest.code())
                    .with_error_message(Some(text(reason))),
                (Ok(_), Err(error)) => result
                    .with_error_code(crate::errors::code(error).code())
                    .with_error_message(Some(text(error.to_string()))),
                (Ok(_), Ok(())) => result.with_error_message(None),
            }
        })
        .collect();
    CreateAclsResponse::default().with_results(results)
}

pub(crate) fn describe(context: &Context, request: DescribeAclsRequest) -> DescribeAclsResponse {
    let response = DescribeAclsResponse::default().with_error_message(None);
    if let Some((code, message)) = refused(
        context,
        Operation::Describe,
        "describing ACLs needs DESCRIBE on the cluster",
    ) {
        return response
            .with_error_code(code.code())
            .with_error_message(Some(text(message)));
    }
    let wanted = match filter(
        request.resource_type_filter,
        request.resource_name_filter.as_ref(),
        request.pattern_type_filter,
        request.principal_filter.as_ref(),
        request.host_filter.as_ref(),
        request.operation,
        request.permission_type,
    ) {
        Ok(wanted) => wanted,
        Err(reason) => {
            return response
                .with_error_code(ResponseError::InvalidRequest.code())
                .with_error_message(Some(text(reason)));
        }
    };
    // Grouped by resource pattern, as Kafka answers (the ACLs are sorted
    // by it).
    let mut resources: Vec<DescribeAclsResource> = Vec::new();
    for acl in context.broker.acls().describe(&wanted) {
        let entry = AclDescription::default()
            .with_principal(text(acl.principal.clone()))
            .with_host(text(acl.host.clone()))
            .with_operation(acl.operation.code())
            .with_permission_type(acl.permission.code());
        let same = resources.last_mut().filter(|r| {
            r.resource_type == acl.resource_type.code()
                && r.resource_name.as_str() == acl.resource_name
                && r.pattern_type == acl.pattern_type.code()
        });
        match same {
            Some(resource) => resource.acls.push(entry),
            None => resources.push(
                DescribeAclsResource::default()
                    .with_resource_type(acl.resource_type.code())
                    .with_resource_name(text(acl.resource_name.clone()))
                    .with_pattern_type(acl.pattern_type.code())
                    .with_acls(vec![entry]),
            ),
        }
    }
    response.with_resources(resources)
}

pub(crate) async fn delete(context: &Context, request: DeleteAclsRequest) -> DeleteAclsResponse {
    if let Some((code, message)) = refused(
        context,
        Operation::Alter,
        "deleting ACLs needs ALTER on the cluster",
    ) {
        let results = request
            .filters
            .iter()
            .map(|_| {
                DeleteAclsFilterResult::default()
                    .with_error_code(code.code())
                    .with_error_message(Some(text(message)))
            })
            .collect();
        return DeleteAclsResponse::default().with_filter_results(results);
    }
    let parsed: Vec<Result<AclFilter, String>> = request
        .filters
        .iter()
        .map(|f| {
            filter(
                f.resource_type_filter,
                f.resource_name_filter.as_ref(),
                f.pattern_type_filter,
                f.principal_filter.as_ref(),
                f.host_filter.as_ref(),
                f.operation,
                f.permission_type,
            )
        })
        .collect();
    let valid: Vec<AclFilter> = parsed.iter().filter_map(|p| p.clone().ok()).collect();
    let broker = std::sync::Arc::clone(&context.broker);
    let (deleted, mut matched) = match finished(blocking(move || broker.delete_acls(valid)).await) {
        Ok(matched) => (Ok(()), matched.into_iter()),
        Err(error) => (Err(error), Vec::new().into_iter()),
    };
    let results = parsed
        .into_iter()
        .map(|parsed| {
            let result = DeleteAclsFilterResult::default().with_error_message(None);
            if let Err(reason) = parsed {
                return result
                    .with_error_code(ResponseError::InvalidRequest.code())
                    .with_error_message(Some(text(reason)));
            }
            if let Err(error) = &deleted {
                return result
                    .with_error_code(crate::errors::code(error).code())
                    .with_error_message(Some(text(error.to_string())));
            }
            let acls = matched
                .next()
                .unwrap_or_default()
                .into_iter()
                .map(|acl| {
                    DeleteAclsMatchingAcl::default()
                        .with_error_message(None)
                        .with_resource_type(acl.resource_type.code())
                        .with_resource_name(text(acl.resource_name))
                        .with_pattern_type(acl.pattern_type.code())
                        .with_principal(text(acl.principal))
                        .with_host(text(acl.host))
                        .with_operation(acl.operation.code())
                        .with_permission_type(acl.permission.code())
                })
                .collect();
            result.with_matching_acls(acls)
        })
        .collect();
    DeleteAclsResponse::default().with_filter_results(results)
}
