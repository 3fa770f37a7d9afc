//! The SDK models a page's local work with this crate's figures (sdk-ts/src/footprint.ts:
//! its `PAGE_MODEL` block): the device classes' watts and the world's grid. This test fails
//! when either side changes without the other.
#![allow(clippy::unwrap_used)]

use kwaainet_footprint::grid;
use kwaainet_footprint::meter::DeviceClass;

#[test]
fn the_sdk_models_pages_with_the_crates_figures() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../sdk-ts/src/footprint.ts");
    let ts = std::fs::read_to_string(path).unwrap();
    let block = ts
        .split("// BEGIN page-model")
        .nth(1)
        .and_then(|rest| rest.split("// END page-model").next())
        .expect("the PAGE_MODEL block");
    let json = block
        .split_once('=')
        .map(|(_, v)| {
            v.trim()
                .trim_end_matches(';')
                .trim_end_matches("as const")
                .trim()
        })
        .unwrap();
    let model: serde_json::Value = serde_json::from_str(json).unwrap();
    let world = grid::world();
    let want = serde_json::json!({
        "busyMw": {
            "phone": DeviceClass::Phone.busy_mw(),
            "tablet": DeviceClass::Tablet.busy_mw(),
            "laptop": DeviceClass::Laptop.busy_mw(),
            "desktop": DeviceClass::Desktop.busy_mw(),
        },
        "world": {
            "intensityMgPerKwh": world.intensity_mg_per_kwh,
            "renewablePermille": world.renewable_permille,
            "year": world.year,
        },
    });
    assert_eq!(model, want, "sdk-ts/src/footprint.ts's PAGE_MODEL");
    assert!(
        ts.contains(grid::SOURCE),
        "the SDK credits the grid data as the crate does"
    );
}
