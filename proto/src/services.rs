//! The gRPC methods FlyteAdmin serves a task, by service, as flyteidl 1.16 declares them in
//! `flyteidl/service/*.proto`: their names, enough to label metrics by method and to say which
//! paths are Admin's (their request and response descriptors are in [`crate::admin_pool`]).
//! `tests/flyteidl_python.rs` checks the list against PyPI flyteidl's descriptors and the pool.

/// `(service full name, method names)` for every service Admin's endpoint serves.
pub const FLYTEADMIN_SERVICES: &[(&str, &[&str])] = &[
    (
        "flyteidl.service.AdminService",
        &[
            "CreateTask",
            "GetTask",
            "ListTaskIds",
            "ListTasks",
            "CreateWorkflow",
            "GetWorkflow",
            "ListWorkflowIds",
            "ListWorkflows",
            "CreateLaunchPlan",
            "GetLaunchPlan",
            "GetActiveLaunchPlan",
            "ListActiveLaunchPlans",
            "ListLaunchPlanIds",
            "ListLaunchPlans",
            "UpdateLaunchPlan",
            "CreateExecution",
            "RelaunchExecution",
            "RecoverExecution",
            "GetExecution",
            "UpdateExecution",
            "GetExecutionData",
            "ListExecutions",
            "TerminateExecution",
            "GetNodeExecution",
            "GetDynamicNodeWorkflow",
            "ListNodeExecutions",
            "ListNodeExecutionsForTask",
            "GetNodeExecutionData",
            "RegisterProject",
            "UpdateProject",
            "GetProject",
            "ListProjects",
            "GetDomains",
            "CreateWorkflowEvent",
            "CreateNodeEvent",
            "CreateTaskEvent",
            "GetTaskExecution",
            "ListTaskExecutions",
            "GetTaskExecutionData",
            "UpdateProjectDomainAttributes",
            "GetProjectDomainAttributes",
            "DeleteProjectDomainAttributes",
            "UpdateProjectAttributes",
            "GetProjectAttributes",
            "DeleteProjectAttributes",
            "UpdateWorkflowAttributes",
            "GetWorkflowAttributes",
            "DeleteWorkflowAttributes",
            "ListMatchableAttributes",
            "ListNamedEntities",
            "GetNamedEntity",
            "UpdateNamedEntity",
            "GetVersion",
            "GetDescriptionEntity",
            "ListDescriptionEntities",
            "GetExecutionMetrics",
        ],
    ),
    (
        "flyteidl.service.DataProxyService",
        &[
            "CreateUploadLocation",
            "CreateDownloadLocation",
            "CreateDownloadLink",
            "GetData",
        ],
    ),
    (
        "flyteidl.service.SignalService",
        &["GetOrCreateSignal", "ListSignals", "SetSignal"],
    ),
    ("flyteidl.service.IdentityService", &["UserInfo"]),
    (
        "flyteidl.service.AuthMetadataService",
        &["GetOAuth2Metadata", "GetPublicClientConfig"],
    ),
];

/// Every method as its gRPC path, `/flyteidl.service.AdminService/GetExecution` and so on.
pub fn paths() -> impl Iterator<Item = String> {
    FLYTEADMIN_SERVICES.iter().flat_map(|(service, methods)| {
        methods
            .iter()
            .map(move |method| format!("/{service}/{method}"))
    })
}
