//! The checked-in CRD is exactly what the Rust types generate.

#[test]
fn the_checked_in_crd_is_up_to_date() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/herald/crds/realtimegateways.yaml");
    let checked_in = std::fs::read_to_string(&path).expect("the CRD is checked in");
    assert!(
        checked_in == herald_operator::crd::crd_yaml(),
        "charts/herald/crds/realtimegateways.yaml is stale: run `cargo run -p herald-operator -- crdgen > charts/herald/crds/realtimegateways.yaml`"
    );
}
