//! `signerd policy check`: evaluate an access policy offline and say which rule decides.

use std::path::PathBuf;

use clap::Subcommand;

use super::CliError;
use signerd::policy::{op_name, parse_op, Policy, Query};
use signerd::{KeyName, Scheme};

/// Exit code when the policy denies the request.
const EXIT_DENY: u8 = 1;
/// Exit code for a bad policy file, op, scheme or key name.
const EXIT_BAD_INPUT: u8 = 2;

/// `signerd policy ...`
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Decide one request against a policy file and print the decision and the rule that made
    /// it. Exit code 0: allowed; 1: denied; 2: bad input (unreadable or invalid policy, unknown
    /// op or scheme, invalid key name).
    Check {
        /// The policy file (TOML).
        #[arg(long, value_name = "FILE")]
        policy: PathBuf,
        /// The caller's identity, as the daemon extracts it from the client certificate.
        #[arg(long)]
        identity: String,
        /// Key name.
        #[arg(long)]
        key: String,
        /// Operation: sign, sign_batch, verify, public_key, list, create_key, rotate_key,
        /// retire_key, destroy_key.
        #[arg(long)]
        op: String,
        /// Signature scheme (for sign, sign_batch, verify), e.g. ecdsa-sha256.
        #[arg(long)]
        scheme: Option<String>,
    },
}

pub fn run(cmd: PolicyCommand) -> Result<(), CliError> {
    match cmd {
        PolicyCommand::Check {
            policy,
            identity,
            key,
            op,
            scheme,
        } => check(&policy, &identity, &key, &op, scheme.as_deref()),
    }
}

fn check(
    path: &std::path::Path,
    identity: &str,
    key: &str,
    op: &str,
    scheme: Option<&str>,
) -> Result<(), CliError> {
    let bad = |m: String| CliError::new(EXIT_BAD_INPUT, m);
    let policy = Policy::load(path).map_err(|e| bad(e.to_string()))?;
    let key = KeyName::new(key).map_err(|e| bad(e.to_string()))?;
    let op = parse_op(op).ok_or_else(|| {
        bad(format!(
            "unknown op {op:?}; expected sign, sign_batch, verify, public_key, list, create_key, \
             rotate_key, retire_key or destroy_key"
        ))
    })?;
    let scheme = scheme
        .map(|s| s.parse::<Scheme>())
        .transpose()
        .map_err(|e| bad(e.to_string()))?;
    let decision = policy.decide(&Query {
        identity,
        key: key.as_str(),
        op,
        scheme,
    });
    println!("{decision}");
    if decision.allowed {
        if matches!(
            op,
            signer_proto::protocol::Op::Sign | signer_proto::protocol::Op::SignBatch
        ) {
            match policy.quota_for(identity) {
                Some((rule, l)) => println!(
                    "quota {:?}: rate {}, burst {}, max_inflight {}",
                    &*rule.name,
                    l.rate.map_or("unlimited".to_owned(), |r| format!("{r}/s")),
                    l.burst,
                    l.max_inflight
                        .map_or("unlimited".to_owned(), |n| n.to_string())
                ),
                None => println!("quota: none"),
            }
        }
        if op == signer_proto::protocol::Op::DestroyKey && policy.approval().destroy_key {
            println!(
                "approval: {} needs a second admin within {:?}",
                op_name(op),
                policy.approval().window
            );
        }
        Ok(())
    } else {
        Err(CliError::new(EXIT_DENY, ""))
    }
}
