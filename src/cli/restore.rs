//! `pool-managerd journal restore --nats`: a lost or damaged journal rebuilt from the events its
//! node published to NATS JetStream, as a new journal: exactly what `journal import` of an
//! export of those events writes (the same import, fed the export lines while the stream is
//! read), with their seqs, times and causes.
//!
//! Owns: the target's checks, the restore into a sibling directory renamed into place only once
//! whole, and the summary. Never: touches an existing journal (it refuses one, naming it), or
//! leaves a partial journal where the daemon would open it: a failed restore removes what it
//! wrote, and an interrupted one leaves only `<dir>.restoring`.

use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use tokio::sync::mpsc;

use super::cluster::{block_on, NatsArgs};
use super::{open_dir, JournalDirArg};
use crate::cluster::read::Reader;

/// Batches of export lines in flight between the stream's reader and the import.
const LINES_IN_FLIGHT: usize = 4;

/// Runs `journal restore`.
pub(super) fn run(source: &NatsArgs, node: &str, dir: &JournalDirArg) -> anyhow::Result<ExitCode> {
    let target = dir.journal_dir.clone();
    check_target(&target)?;
    block_on(restore(source, node, &target))
}

/// The target is a new directory, or an empty one: never a journal, never somebody's files.
fn check_target(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    if !dir.is_dir() {
        bail!(
            "cannot restore into {}: it is not a directory; pass --journal-dir a new directory",
            dir.display()
        );
    }
    if pool_journal::layout::Layout::new(dir).holds_journal() {
        bail!(
            "cannot restore into {}: it already holds a journal; restore writes only a new \
             journal: move it aside first (e.g. mv {0} {0}.old; it may still be repaired: \
             pool-managerd journal verify / repair), or pass another --journal-dir",
            dir.display()
        );
    }
    let mut entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the directory {}", dir.display()))?;
    if entries.next().is_some() {
        bail!(
            "cannot restore into {}: the directory holds files but no journal; restore creates a \
             journal only in a new or empty directory (pass another --journal-dir)",
            dir.display()
        );
    }
    Ok(())
}

/// `<dir>.restoring`, beside `dir` (the same file system, for the rename).
fn staging_of(dir: &Path) -> anyhow::Result<PathBuf> {
    let name = dir
        .file_name()
        .with_context(|| format!("--journal-dir {} has no directory name", dir.display()))?;
    let mut staging = name.to_os_string();
    staging.push(".restoring");
    Ok(dir.with_file_name(staging))
}

async fn restore(source: &NatsArgs, node: &str, target: &Path) -> anyhow::Result<ExitCode> {
    let stream = &source.stream;
    let url = &source.nats;
    let mut reader = source.source().await?.node(node).await?;
    if reader.total() == 0 {
        reader.close().await;
        bail!(
            "the stream {stream} at {url} holds no event of node {node}: nothing to restore; run \
             pool-managerd cluster events --nats {url} to see which nodes published there"
        );
    }
    let staging = staging_of(target)?;
    if staging.exists() {
        bail!(
            "{} exists: an earlier restore was interrupted there (or one runs now); remove it, \
             then restore again",
            staging.display()
        );
    }
    if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create the directory {}", parent.display()))?;
    }
    let restored = import(&mut reader, &staging).await;
    let duplicates = reader.duplicates();
    reader.close().await;
    let (count, last_seq) = match restored {
        Ok(done) => done,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e.context(format!(
                "nothing was restored into {} (the stream {stream} at {url} is unchanged)",
                target.display()
            )));
        }
    };
    put_in_place(&staging, target)?;
    println!(
        "restored {count} event(s) of node {node} from the stream {stream} at {url} into {}, \
         last seq {last_seq}",
        target.display()
    );
    if duplicates > 0 {
        println!(
            "({duplicates} message(s) repeated a seq already read (published again after the \
             server's duplicate window) and were skipped)"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Imports the node's events into a new journal at `staging`, while they are read: the count
/// and the last seq.
async fn import(reader: &mut Reader, staging: &Path) -> anyhow::Result<(u64, u64)> {
    let journal = open_dir(staging)?;
    let (lines, received) = mpsc::channel::<Result<Vec<u8>, String>>(LINES_IN_FLIGHT);
    let writer = journal.clone();
    let importing = tokio::task::spawn_blocking(move || {
        let mut input = BufReader::new(Lines {
            received,
            chunk: Vec::new(),
            at: 0,
        });
        writer.import(&mut input)
    });
    let read = feed(reader, &lines).await;
    if let Err(why) = &read {
        // The import fails on it and rolls back.
        let _ = lines.send(Err(why.to_string())).await;
    }
    drop(lines);
    let imported = importing.await.context("the import's thread failed")?;
    let closed = journal.close();
    let (count, last_seq) = read?;
    let imported = imported.with_context(|| format!("cannot import into {}", staging.display()))?;
    closed.with_context(|| format!("cannot close the journal at {}", staging.display()))?;
    if imported != last_seq {
        bail!("the import ended at seq {imported}, the stream at seq {last_seq}");
    }
    Ok((count, last_seq))
}

/// Sends the export line of every message read; the count and the last seq.
async fn feed(
    reader: &mut Reader,
    lines: &mpsc::Sender<Result<Vec<u8>, String>>,
) -> anyhow::Result<(u64, u64)> {
    let (mut count, mut last_seq) = (0u64, 0u64);
    while let Some(batch) = reader.next_batch().await? {
        let mut chunk = Vec::new();
        for published in &batch {
            chunk.extend_from_slice(super::journal::export_line(&published.envelope)?.as_bytes());
            chunk.push(b'\n');
            count += 1;
            last_seq = published.envelope.seq;
        }
        if lines.send(Ok(chunk)).await.is_err() {
            break; // the import stopped: its error says why
        }
    }
    Ok((count, last_seq))
}

/// The import's input: the chunks of export lines, an error as a read error.
struct Lines {
    received: mpsc::Receiver<Result<Vec<u8>, String>>,
    chunk: Vec<u8>,
    at: usize,
}

impl Read for Lines {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at >= self.chunk.len() {
            match self.received.blocking_recv() {
                Some(Ok(chunk)) => (self.chunk, self.at) = (chunk, 0),
                Some(Err(why)) => return Err(io::Error::other(why)),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Renames the whole restored journal to `target` (an empty directory there is replaced) and
/// makes the rename durable.
fn put_in_place(staging: &Path, target: &Path) -> anyhow::Result<()> {
    std::fs::rename(staging, target).with_context(|| {
        format!(
            "the journal was restored into {} but cannot be renamed to {} (move it there \
             yourself)",
            staging.display(),
            target.display()
        )
    })?;
    let parent = target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::File::open(parent)
        .and_then(|dir| dir.sync_all())
        .with_context(|| format!("cannot sync the directory {}", parent.display()))
}
