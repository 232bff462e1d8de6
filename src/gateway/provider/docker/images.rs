//! Making a function's image available before it is deployed, by the pull policy.

use bollard::Docker;
use bollard::errors::Error as EngineError;
use bollard::query_parameters::CreateImageOptionsBuilder;
use futures_util::StreamExt;

use crate::gateway::provider::ProviderError;

/// When the provider pulls a function's image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PullPolicy {
    /// Pull at every deployment (a tag that moved is picked up).
    Always,
    /// Pull only when the engine does not have the image.
    IfNotPresent,
    /// Never pull: the image must be present (built or loaded on the engine's machine).
    Never,
}

/// Makes `image` present on the engine according to `policy`. An image that is missing and
/// cannot be pulled is [`ProviderError::Invalid`], naming the image and the engine's reason.
pub async fn ensure(docker: &Docker, image: &str, policy: PullPolicy) -> Result<(), ProviderError> {
    if policy != PullPolicy::Always {
        match docker.inspect_image(image).await {
            Ok(_) => return Ok(()),
            Err(e) if is_not_found(&e) => {
                if policy == PullPolicy::Never {
                    return Err(ProviderError::Invalid(format!(
                        "image {image} is not present on the container engine and the pull policy is never: {}",
                        reason(&e)
                    )));
                }
            }
            Err(e) => return Err(unreachable_engine(&e)),
        }
    }
    tracing::info!(%image, "pulling image");
    let options = CreateImageOptionsBuilder::default()
        .from_image(image)
        .build();
    let mut progress = docker.create_image(Some(options), None, None);
    while let Some(step) = progress.next().await {
        match step {
            Ok(_) => {}
            Err(e) if is_connection(&e) => return Err(unreachable_engine(&e)),
            Err(e) => {
                return Err(ProviderError::Invalid(format!(
                    "cannot pull image {image}: {}",
                    reason(&e)
                )));
            }
        }
    }
    // Some engines end a failed pull without an error item: check.
    match docker.inspect_image(image).await {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Err(ProviderError::Invalid(format!(
            "cannot pull image {image}: the engine reported no error, but the image is not there"
        ))),
        Err(e) => Err(unreachable_engine(&e)),
    }
}

/// Whether the engine answered 404.
pub fn is_not_found(e: &EngineError) -> bool {
    matches!(
        e,
        EngineError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// Whether the engine could not be reached at all (as opposed to answering with an error).
pub fn is_connection(e: &EngineError) -> bool {
    matches!(
        e,
        EngineError::HyperResponseError { .. }
            | EngineError::IOError { .. }
            | EngineError::RequestTimeoutError
            | EngineError::SocketNotFoundError(_)
    )
}

/// The engine's own words for an error.
pub fn reason(e: &EngineError) -> String {
    match e {
        EngineError::DockerResponseServerError {
            status_code,
            message,
        } => format!("{message} (HTTP {status_code})"),
        EngineError::DockerStreamError { error } => error.clone(),
        other => other.to_string(),
    }
}

/// The error for an engine that cannot be reached.
pub fn unreachable_engine(e: &EngineError) -> ProviderError {
    ProviderError::Unavailable(format!("container engine: {}", reason(e)))
}
