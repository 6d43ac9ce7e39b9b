//! The committed flyteidl2 descriptors (`proto/descriptors/flyteidl2.binpb`) against the pinned
//! PyPI flyteidl2 in tests/.venv-flyte2 (installed by `tests/run` from
//! tests/requirements-flyte2.txt): the dump is regenerated and compared byte for byte.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn committed_flyteidl2_descriptors_are_what_the_pinned_flyteidl2_gives() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = root.join("tests/.venv-flyte2/bin/python");
    assert!(
        python.exists(),
        "no venv at {}: run `tests/run` (it installs tests/requirements-flyte2.txt)",
        python.display()
    );
    let out = Command::new(&python)
        .arg(root.join("tests/python/flyteidl2_descriptors.py"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hex = String::from_utf8(out.stdout).unwrap();
    let pinned = data_encoding::HEXLOWER
        .decode(hex.trim().as_bytes())
        .unwrap();
    assert!(
        pinned == flyte_auth_proto::FLYTE2_DESCRIPTOR_SET,
        "proto/descriptors/flyteidl2.binpb differs from PyPI flyteidl2's descriptors: regenerate \
         it with `tests/.venv-flyte2/bin/python tests/python/flyteidl2_descriptors.py | xxd -r -p \
         > proto/descriptors/flyteidl2.binpb`"
    );
    // The pool decodes and has every service the dump was made for.
    let pool = flyte_auth_proto::flyteidl2_pool();
    let services: Vec<String> = pool.services().map(|s| s.full_name().to_string()).collect();
    for service in [
        "flyteidl2.auth.AuthMetadataService",
        "flyteidl2.auth.IdentityService",
        "flyteidl2.actions.ActionsService",
        "flyteidl2.cluster.ClusterService",
        "flyteidl2.dataproxy.DataProxyService",
        "flyteidl2.project.ProjectService",
        "flyteidl2.task.TaskService",
        "flyteidl2.workflow.QueueService",
        "flyteidl2.workflow.RunService",
        "flyteidl2.workflow.StateService",
    ] {
        assert!(
            services.iter().any(|s| s == service),
            "{service} not in {services:?}"
        );
    }
}
