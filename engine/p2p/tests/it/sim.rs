//! The scale simulation, small: 60 nodes, every lookup must succeed.

#[path = "../../benches/sim/mod.rs"]
mod swarm;

use swarm::{SimConfig, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_node_memory_swarm_finds_every_record() -> anyhow::Result<()> {
    let report = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        run(SimConfig {
            nodes: 60,
            lookups: 120,
            ..SimConfig::default()
        }),
    )
    .await??;
    assert_eq!(report.nodes, 60);
    assert_eq!(report.published, 60, "{report}");
    assert_eq!(report.found, report.lookups, "{report}");
    assert!(report.avg_routing_table >= 10.0, "{report}");
    Ok(())
}
