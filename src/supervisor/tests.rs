//! Unit tests of the supervisor's worker map.

use super::*;
use std::time::Duration;

use crate::port::{GpuSummary, Published};

fn supervisor(dir: &std::path::Path) -> Supervisor {
    let dirs = RuntimeDirs::create(dir).unwrap();
    let clock: SharedClock = Arc::new(crate::clock::ManualClock::new(0));
    let settings = SupervisorSettings::new(dirs, Policy::default(), clock);
    let (tx, _rx) = tokio::sync::mpsc::channel(8);
    let gpu = GpuSummary {
        available: false,
        count: 0,
        reason: None,
        required: false,
    };
    let registry = Registry::new(Published::durable(Arc::new(Default::default()), gpu));
    Supervisor::new(settings, Reporter::new(tx), registry)
}

async fn workers_become(supervisor: &Supervisor, count: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while supervisor.workers() != count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "workers: {}",
            supervisor.workers()
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn a_pools_worker_ends_with_its_files_and_a_new_one_serves_the_same_id() {
    let dir = tempfile::tempdir().unwrap();
    let supervisor = supervisor(dir.path());
    let a = PoolId::new("a").unwrap();
    let b = PoolId::new("b").unwrap();
    supervisor.dispatch(1, Effect::RemovePidFile { pool_id: a.clone() });
    supervisor.dispatch(2, Effect::RemovePidFile { pool_id: b.clone() });
    assert_eq!(supervisor.workers(), 2);
    supervisor.dispatch(3, Effect::RemovePoolFiles { pool_id: a.clone() });
    workers_become(&supervisor, 1).await;
    // The same id again: a new worker runs its effects (here: the pid file goes).
    let pid_file = supervisor.shared.settings.dirs.pid_path("a");
    std::fs::write(&pid_file, "1\n").unwrap();
    let (done, ran) = tokio::sync::oneshot::channel();
    let done: Done = Box::new(move || {
        let _ = done.send(());
    });
    supervisor.dispatch_then(4, Effect::RemovePidFile { pool_id: a }, vec![done]);
    ran.await.unwrap();
    assert!(!pid_file.exists());
    supervisor.dispatch(5, Effect::RemovePoolFiles { pool_id: b });
    workers_become(&supervisor, 1).await;
}
