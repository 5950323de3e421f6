//! `credential-provider`: a kubelet image credential provider
//! (`credentialprovider.kubelet.k8s.io/v1`). The kubelet writes a
//! `CredentialProviderRequest` on standard input and reads a
//! `CredentialProviderResponse` from standard output: the credentials of the
//! `file` sink (format `json`) whose registry is the image's host, cached
//! per registry until the token's next rotation (see
//! [`crate::tokens::helper::provider_answer`]). The same sinks as
//! `credential-helper`; `deploy/kubernetes/credential-provider-config.yaml`
//! shows the kubelet's side.

use super::credential_helper::{sink_documents, stdin_text};
use super::{CliError, io};
use crate::tokens::helper;
use clap::Args;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Args)]
pub struct CredentialProviderArgs {
    /// A `file` sink in `json` format to answer from (repeatable); default:
    /// every such sink of the config
    #[arg(long, value_name = "FILE")]
    pub file: Vec<PathBuf>,
}

pub(super) fn run(
    flag: Option<&Path>,
    args: &CredentialProviderArgs,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let docs = sink_documents(flag, &args.file, "credential-provider")?;
    let input = stdin_text()?;
    let text = helper::provider_answer(&input, &docs, chrono::Utc::now())
        .map_err(|e| CliError::Failed(anyhow::anyhow!("credential-provider: {e}")))?;
    out.write_all(text.as_bytes()).map_err(io)
}
