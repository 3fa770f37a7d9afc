//! One round of butterfly all-reduce in a group (Hivemind's `AllReduceRunner`), over any
//! [`Transport`], with no master:
//!
//! 1. The vector is cut into one part per member ([`crate::partition`], by share).
//! 2. Every member sends part `j` of its values to member `j`, compressed with the round's
//!    codec.
//! 3. Member `j` averages what reached it within the timeout, weighted by each sender's
//!    weight (its samples), in member order with `f64` sums, so the result does not depend
//!    on arrival order. A member whose part did not arrive in time is a straggler: it is left
//!    out of that average.
//! 4. Member `j` sends the average back, compressed once, to every member it averaged, and
//!    keeps the same decoded values itself: every member that receives a part holds the
//!    same bits.
//! 5. A part whose reducer does not answer in time (it died, or it left us out) keeps this
//!    member's own values: nothing is ever replaced by values that are not an average.
//!
//! Frames from peers are checked before they count: the group key, the sender against the
//! peer the transport authenticated, the part, the shape, the codec, the weight, every
//! value finite. A refused frame is reported and the round goes on without it.

use std::collections::BTreeMap;
use std::future::Future;
use std::ops::Range;
use std::pin::pin;
use std::time::Duration;

use futures::FutureExt;
use futures::future::{Either, join_all, select};
use kwaainet_core::codec::Codec;

use crate::frame::{self, Header, Kind};
use crate::partition::{PartitionError, partition};

/// The largest weight a member may claim (a sample count far beyond any real batch).
pub const MAX_WEIGHT: f32 = 1e12;

/// How a round reaches the other members of its group.
pub trait Transport {
    /// Sends `frame` to member `to`; an error says why it could not.
    fn send(&self, to: usize, frame: Vec<u8>) -> impl Future<Output = Result<(), String>>;
    /// The next frame for this round, with the index of the member that sent it, as the
    /// transport authenticated it; `None` once no frame can come any more.
    fn recv(&mut self) -> impl Future<Output = Option<(usize, Vec<u8>)>>;
}

/// The group of a round: who takes part, in an order every member agrees on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// The round's key: every frame carries it, frames with another are refused.
    pub key: [u8; 16],
    /// Each member's share of the reduction (for example its bandwidth); 0 reduces nothing.
    pub shares: Vec<u32>,
    /// This member's index.
    pub me: usize,
}

/// How a round runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The codec of every part and average (the whole group uses one).
    pub codec: Codec,
    /// This member's weight in the averages (its samples since the last round).
    pub weight: f32,
    /// How long to wait for the members' parts, and again for the averages.
    pub timeout: Duration,
    /// The largest payload accepted or sent.
    pub max_payload: usize,
}

impl Options {
    /// `codec`, weight 1, 10 s, payloads up to 64 MiB.
    pub fn new(codec: Codec) -> Self {
        Self {
            codec,
            weight: 1.0,
            timeout: Duration::from_secs(10),
            max_payload: 64 << 20,
        }
    }
}

/// Why a round could not start (nothing was sent).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AvgError {
    /// The group cannot split the vector.
    #[error(transparent)]
    Partition(#[from] PartitionError),
    /// This member is not in the group.
    #[error("member {me} is not in a group of {size}")]
    NotMember {
        /// The index given.
        me: usize,
        /// The group's size.
        size: usize,
    },
    /// This member's weight is not usable.
    #[error("weight {0} is not a finite number in [0, {MAX_WEIGHT}]")]
    Weight(f32),
    /// A part would not fit in a frame.
    #[error(
        "a part of {values} values is {bytes} bytes in {codec}, over the {limit}-byte limit: use more members, a smaller codec or a higher limit"
    )]
    PartTooLarge {
        /// Values in the largest part.
        values: usize,
        /// Its encoded size.
        bytes: usize,
        /// The codec.
        codec: &'static str,
        /// The limit.
        limit: usize,
    },
}

/// What a round did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// The members whose values this member's average includes (itself included), in order.
    pub reduced_from: Vec<usize>,
    /// The total weight of that average.
    pub reduced_weight: f64,
    /// Parts that hold their reducer's average now (this member's own included, unless no
    /// weight reached it or its average did not survive the codec).
    pub averaged: Vec<usize>,
    /// Parts left as this member's own values: their reducer did not answer in time.
    pub kept_local: Vec<usize>,
    /// Frames refused: the member that sent each and why.
    pub refused: Vec<(usize, String)>,
    /// Members a frame could not be sent to, and why.
    pub unreachable: Vec<(usize, String)>,
    /// Payload and header bytes sent.
    pub bytes_sent: u64,
    /// Bytes of frames received (refused ones included).
    pub bytes_received: u64,
}

impl Report {
    /// Whether the round went as planned for this member: its average includes all `size`
    /// members (when it reduces a part), every other part came back averaged, and nothing
    /// was refused or unreachable.
    pub fn complete(&self, size: usize) -> bool {
        self.kept_local.is_empty()
            && self.refused.is_empty()
            && self.unreachable.is_empty()
            && (self.reduced_from.is_empty() || self.reduced_from.len() == size)
    }
}

/// Where the round stands, shared by both phases.
struct Round<'a> {
    group: &'a Group,
    opts: &'a Options,
    parts: Vec<Range<usize>>,
    /// Part values that reached this reducer, by sender.
    received: BTreeMap<usize, (f32, Vec<f32>)>,
    /// Averages that reached this member, by part.
    averages: BTreeMap<usize, Vec<f32>>,
    /// Whether this member's own part is reduced (late parts are refused after that).
    reduced: bool,
    report: Report,
}

impl Round<'_> {
    fn size(&self) -> usize {
        self.parts.len()
    }

    /// Checks a frame from `from` and keeps what it carries.
    fn take(&mut self, from: usize, bytes: &[u8]) {
        self.report.bytes_received += bytes.len() as u64;
        if let Err(why) = self.check(from, bytes) {
            tracing::debug!(from, %why, "averaging frame refused");
            self.report.refused.push((from, why));
        }
    }

    fn check(&mut self, from: usize, bytes: &[u8]) -> Result<(), String> {
        let me = self.group.me;
        if from >= self.size() || from == me {
            return Err(format!(
                "a frame from member {from}, not another member of this group"
            ));
        }
        let (h, payload) =
            frame::decode(bytes, self.opts.max_payload).map_err(|e| e.to_string())?;
        if h.group != self.group.key {
            return Err("a frame for another group".into());
        }
        if h.from as usize != from {
            return Err(format!("member {from} signed a frame as member {}", h.from));
        }
        if h.codec != self.opts.codec {
            return Err(format!(
                "codec {} in a {} round",
                h.codec.name(),
                self.opts.codec.name()
            ));
        }
        if !(h.weight.is_finite() && (0.0..=MAX_WEIGHT).contains(&h.weight)) {
            return Err(format!("weight {}", h.weight));
        }
        let part = h.part as usize;
        match h.kind {
            Kind::StateAsk | Kind::State => Err("a state frame inside a round".into()),
            Kind::Part if part != me => {
                Err(format!("part {part} sent to the reducer of part {me}"))
            }
            Kind::Reduced if part != from => Err(format!(
                "member {from} sent an average of part {part}, not its own"
            )),
            Kind::Part if self.reduced => Err("its part arrived after the average was made".into()),
            Kind::Part if self.received.contains_key(&from) => {
                Err("a second part from the same member".into())
            }
            Kind::Reduced if self.averages.contains_key(&part) => {
                Err("a second average of the same part".into())
            }
            kind => {
                let n = self.parts[part].len();
                if h.values as usize != n {
                    return Err(format!("{} values for a part of {n}", h.values));
                }
                let values = h.codec.decode(payload, n).map_err(|e| e.to_string())?;
                match kind {
                    Kind::Part => {
                        self.received.insert(from, (h.weight, values));
                    }
                    _ => {
                        self.averages.insert(part, values);
                    }
                }
                Ok(())
            }
        }
    }

    fn header(&self, kind: Kind, part: usize, weight: f32, values: usize) -> Header {
        Header {
            kind,
            group: self.group.key,
            from: self.group.me as u16,
            part: part as u16,
            codec: self.opts.codec,
            weight,
            values: values as u32,
        }
    }

    /// Whether every member's part has reached this reducer.
    fn all_parts_in(&self) -> bool {
        self.parts[self.group.me].is_empty() || self.received.len() == self.size() - 1
    }

    /// Whether every average this member can still expect has arrived.
    fn all_averages_in(&self, expected: &[usize]) -> bool {
        expected.iter().all(|p| self.averages.contains_key(p))
    }
}

/// Runs one round of butterfly all-reduce: on return `values` holds, part by part, the
/// group's weighted average, or this member's own values where a part's reducer did not
/// answer. Errors only when the round cannot start; what went wrong during it is in the
/// [`Report`].
///
/// `sleep` makes the timeouts (`tokio::time::sleep` natively, a timer in a page).
pub async fn all_reduce<T, S, F>(
    group: &Group,
    opts: &Options,
    values: &mut [f32],
    transport: &mut T,
    sleep: S,
) -> Result<Report, AvgError>
where
    T: Transport,
    S: Fn(Duration) -> F,
    F: Future<Output = ()>,
{
    let parts = partition(values.len(), &group.shares)?;
    let size = parts.len();
    let me = group.me;
    if me >= size {
        return Err(AvgError::NotMember { me, size });
    }
    if !(opts.weight.is_finite() && (0.0..=MAX_WEIGHT).contains(&opts.weight)) {
        return Err(AvgError::Weight(opts.weight));
    }
    if let Some(big) = parts.iter().map(|p| p.len()).max() {
        let bytes = opts.codec.encoded_len(big);
        if bytes > opts.max_payload {
            return Err(AvgError::PartTooLarge {
                values: big,
                bytes,
                codec: opts.codec.name(),
                limit: opts.max_payload,
            });
        }
    }
    let mut round = Round {
        group,
        opts,
        parts,
        received: BTreeMap::new(),
        averages: BTreeMap::new(),
        reduced: false,
        report: Report::default(),
    };

    // 1. Every other reducer gets its part of our values.
    let outgoing: Vec<(usize, Vec<u8>)> = (0..size)
        .filter(|&j| j != me && !round.parts[j].is_empty())
        .map(|j| {
            let r = round.parts[j].clone();
            let payload = opts.codec.encode(&values[r.clone()]);
            (
                j,
                frame::encode(&round.header(Kind::Part, j, opts.weight, r.len()), &payload),
            )
        })
        .collect();
    let delivered = send_all(transport, outgoing, opts.timeout, &sleep, &mut round.report).await;

    // 2. Our part: wait for the members' parts, or the timeout.
    {
        let mut deadline = pin!(sleep(opts.timeout).fuse());
        while !round.all_parts_in() {
            let next = pin!(transport.recv());
            match select(next, deadline.as_mut()).await {
                Either::Left((Some((from, bytes)), _)) => round.take(from, &bytes),
                Either::Left((None, _)) | Either::Right(_) => break,
            }
        }
    }

    // 3. Average it (in member order, f64), and send it back to the members it includes.
    let mine = round.parts[me].clone();
    round.reduced = true;
    if !mine.is_empty() {
        let mut acc = vec![0f64; mine.len()];
        let mut total = 0f64;
        let mut from = Vec::with_capacity(round.received.len() + 1);
        for k in 0..size {
            let (w, xs): (f32, &[f32]) = if k == me {
                (opts.weight, &values[mine.clone()])
            } else if let Some((w, xs)) = round.received.get(&k) {
                (*w, xs)
            } else {
                continue;
            };
            from.push(k);
            total += w as f64;
            for (a, &x) in acc.iter_mut().zip(xs) {
                *a += w as f64 * x as f64;
            }
        }
        round.report.reduced_from = from;
        round.report.reduced_weight = total;
        if total > 0.0 {
            let mean: Vec<f32> = acc.iter().map(|a| (a / total) as f32).collect();
            let payload = opts.codec.encode(&mean);
            // Keep what the others will decode, so every member holds the same bits.
            match opts.codec.decode(&payload, mean.len()) {
                Ok(decoded) => {
                    values[mine.clone()].copy_from_slice(&decoded);
                    round.report.averaged.push(me);
                }
                Err(e) => {
                    // Only a mean too large for the codec's range gets here.
                    tracing::warn!(error = %e, "the average does not survive its codec: kept unaveraged");
                    round.report.reduced_from = vec![me];
                }
            }
            let back: Vec<(usize, Vec<u8>)> = round
                .report
                .reduced_from
                .iter()
                .filter(|&&k| k != me)
                .map(|&k| {
                    (
                        k,
                        frame::encode(
                            &round.header(Kind::Reduced, me, total as f32, mine.len()),
                            &payload,
                        ),
                    )
                })
                .collect();
            send_all(transport, back, opts.timeout, &sleep, &mut round.report).await;
        }
    }

    // 4. The other parts: wait for their averages from the reducers we reached.
    {
        let mut deadline = pin!(sleep(opts.timeout).fuse());
        while !round.all_averages_in(&delivered) {
            let next = pin!(transport.recv());
            match select(next, deadline.as_mut()).await {
                Either::Left((Some((from, bytes)), _)) => round.take(from, &bytes),
                Either::Left((None, _)) | Either::Right(_) => break,
            }
        }
    }
    for j in (0..size).filter(|&j| j != me && !round.parts[j].is_empty()) {
        match round.averages.remove(&j) {
            Some(avg) => {
                values[round.parts[j].clone()].copy_from_slice(&avg);
                round.report.averaged.push(j);
            }
            None => round.report.kept_local.push(j),
        }
    }
    round.report.averaged.sort_unstable();
    Ok(round.report)
}

/// Sends every frame at once, each within `timeout`; the members reached, in order.
async fn send_all<T, S, F>(
    transport: &T,
    frames: Vec<(usize, Vec<u8>)>,
    timeout: Duration,
    sleep: &S,
    report: &mut Report,
) -> Vec<usize>
where
    T: Transport,
    S: Fn(Duration) -> F,
    F: Future<Output = ()>,
{
    let sends = frames.into_iter().map(|(to, f)| async move {
        let len = f.len() as u64;
        let sent = transport.send(to, f);
        let r = match select(pin!(sent), pin!(sleep(timeout))).await {
            Either::Left((r, _)) => r,
            Either::Right(_) => Err(format!("no answer within {timeout:?}")),
        };
        (to, len, r)
    });
    let mut reached = Vec::new();
    for (to, len, r) in join_all(sends).await {
        match r {
            Ok(()) => {
                report.bytes_sent += len;
                reached.push(to);
            }
            Err(why) => {
                tracing::debug!(to, %why, "averaging frame not sent");
                report.unreachable.push((to, why));
            }
        }
    }
    reached
}
