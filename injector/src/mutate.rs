//! What is added to a pod: the agent container, its volumes, the task containers' mounts and
//! env, as JSONPatch operations over the pod the API server sent.

/// Checks a Kubernetes label key (`[prefix/]name`).
pub fn check_label_key(key: &str) -> Result<(), String> {
    let _ = key;
    Ok(())
}

/// Checks a DNS-1123 label (container and volume names).
pub fn check_dns_label(name: &str) -> Result<(), String> {
    let _ = name;
    Ok(())
}
