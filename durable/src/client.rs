//! The connection to Temporal, checked once at start.

use std::sync::Arc;
use std::time::Duration;
use temporalio_client::grpc::WorkflowService;
use temporalio_client::tonic::{Code, IntoRequest};
use temporalio_client::{Client, ClientOptions, Connection, ConnectionOptions, Url};
use temporalio_common::protos::temporal::api::workflowservice::v1::DescribeNamespaceRequest;

/// How kodo uses Temporal.
#[derive(Clone, Debug)]
pub struct TemporalOptions {
    /// The frontend's `HOST:PORT`.
    pub address: String,
    /// The namespace.
    pub namespace: String,
    /// The task queue of kodo's workflows and activities.
    pub task_queue: String,
    /// A workflow's id is this prefix and the fid.
    pub workflow_id_prefix: String,
    /// The longest an execution may run, all attempts together.
    pub execution_timeout: Option<Duration>,
    /// An attempt whose worker is silent this long is retried elsewhere.
    pub heartbeat_timeout: Duration,
    /// Attempts in all.
    pub attempts: u32,
    /// Who this process is to Temporal (a workflow's `worker` in
    /// `GET /executions/{fid}/durable`): kodo's node name, unique per process.
    pub identity: String,
}

/// Why Temporal cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DurableError {
    /// The server did not answer.
    #[error("temporal at {address}: {reason}")]
    Unreachable {
        /// `HOST:PORT`.
        address: String,
        /// Why.
        reason: String,
    },
    /// The namespace does not exist there.
    #[error(
        "temporal at {address}: namespace `{namespace}` not found (create it, or set temporal.namespace)"
    )]
    Namespace {
        /// `HOST:PORT`.
        address: String,
        /// The namespace.
        namespace: String,
    },
    /// The worker could not be set up.
    #[error("temporal worker: {0}")]
    Worker(String),
}

/// A connected Temporal client and kodo's options for it.
#[derive(Debug)]
pub struct Temporal {
    pub(crate) client: Client,
    pub(crate) options: TemporalOptions,
}

/// How long connecting, and each check, may take.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

impl Temporal {
    /// Connects and checks that the namespace exists.
    pub async fn connect(options: TemporalOptions) -> Result<Arc<Self>, DurableError> {
        let unreachable = |reason: String| DurableError::Unreachable {
            address: options.address.clone(),
            reason,
        };
        let url = Url::parse(&format!("http://{}", options.address))
            .map_err(|e| unreachable(format!("not HOST:PORT: {e}")))?;
        let connection = ConnectionOptions::new(url)
            .identity(options.identity.clone())
            .connect_timeout(ANSWER_WITHIN)
            .build();
        let connection = tokio::time::timeout(ANSWER_WITHIN, Connection::connect(connection))
            .await
            .map_err(|_| unreachable(format!("no answer within {ANSWER_WITHIN:?}")))?
            .map_err(|e| unreachable(e.to_string()))?;
        let client = Client::new(connection, ClientOptions::new(&options.namespace).build())
            .map_err(|e| unreachable(e.to_string()))?;
        let temporal = Arc::new(Self { client, options });
        temporal.check().await?;
        Ok(temporal)
    }

    /// Whether the server answers and knows the namespace now.
    pub async fn check(&self) -> Result<(), DurableError> {
        let address = self.options.address.clone();
        let request = DescribeNamespaceRequest {
            namespace: self.options.namespace.clone(),
            ..Default::default()
        };
        let mut raw = self.client.clone();
        let answer = tokio::time::timeout(
            ANSWER_WITHIN,
            raw.describe_namespace(request.into_request()),
        );
        match answer.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(status)) if status.code() == Code::NotFound => Err(DurableError::Namespace {
                address,
                namespace: self.options.namespace.clone(),
            }),
            Ok(Err(status)) => Err(DurableError::Unreachable {
                address,
                reason: status.message().to_string(),
            }),
            Err(_) => Err(DurableError::Unreachable {
                address,
                reason: format!("no answer within {ANSWER_WITHIN:?}"),
            }),
        }
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The options.
    pub fn options(&self) -> &TemporalOptions {
        &self.options
    }

    /// The workflow id of execution `fid`.
    pub(crate) fn workflow_id(&self, fid: &impl std::fmt::Display) -> String {
        format!("{}{fid}", self.options.workflow_id_prefix)
    }

    /// A handle of execution `fid`'s workflow.
    pub(crate) fn handle(&self, fid: &impl std::fmt::Display) -> crate::control::Handle {
        self.client
            .get_workflow_handle::<crate::workflow::KodoExecution>(self.workflow_id(fid))
    }
}
