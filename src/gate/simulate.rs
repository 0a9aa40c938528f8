//! Simulated gates: the demo's traffic and the capacity benchmark.
//!
//! Each simulated gate holds its own QUIC connection and certificate. Arrivals are open-loop:
//! every gate draws Poisson arrivals at its share of the offered rate and sends each request
//! on time whether or not earlier ones were answered, so a slow appliance shows up as latency
//! rather than as less load (closed-loop generators hide exactly the overload they should
//! reveal).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::Exp;

use super::client::{GateClient, GateError};
use super::travellers::Population;
use crate::flows::reason_label;
use crate::pki;
use crate::proto::{self, request::Operation, response::Result as Answer};

/// The share of each operation in the offered load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mix {
    /// Weight of enrolments.
    pub enrol: u32,
    /// Weight of 1:1 verifications.
    pub verify: u32,
    /// Weight of 1:N identifications.
    pub identify: u32,
}

impl std::str::FromStr for Mix {
    type Err = String;

    /// Parses `enrol:verify:identify`, e.g. `1:8:1`.
    fn from_str(s: &str) -> Result<Mix, String> {
        let parts: Vec<u32> = s
            .split(':')
            .map(|p| p.trim().parse::<u32>().map_err(|e| format!("{p:?}: {e}")))
            .collect::<Result<_, _>>()?;
        match parts[..] {
            [enrol, verify, identify] if enrol + verify + identify > 0 => Ok(Mix {
                enrol,
                verify,
                identify,
            }),
            _ => Err("expected enrol:verify:identify weights, not all zero, e.g. 1:8:1".into()),
        }
    }
}

/// What to simulate.
#[derive(Clone, Debug)]
pub struct Simulation {
    /// The appliance.
    pub server: SocketAddr,
    /// The name the server certificate is checked against.
    pub server_name: String,
    /// A development PKI folder (see [`crate::pki`]).
    pub certs: PathBuf,
    /// Gates, each with its own connection; gate `n` uses `gates/gate-000n.*`.
    pub gates: usize,
    /// Offered requests per second, all gates together.
    pub rate_per_s: f64,
    /// How long to offer load.
    pub duration: Duration,
    /// The operation mix.
    pub mix: Mix,
    /// The synthetic travellers.
    pub population: Population,
    /// Travellers `0..enrolled` are already in the registry (from `gallery synth` + import).
    pub enrolled: u64,
    /// Enrolments made by this run start at this traveller index (at least `enrolled`).
    pub first_new: u64,
    /// Share of verifications that claim somebody else's identity.
    pub impostor_share: f64,
    /// Candidates asked for by identify.
    pub identify_k: u32,
    /// Deadline sent with every request, in milliseconds.
    pub deadline_ms: u32,
    /// The model id of the templates.
    pub model_id: String,
    /// Seed of the arrivals and probes.
    pub seed: u64,
    /// Show a progress bar.
    pub progress: bool,
}

#[derive(Default)]
struct Tally {
    outcomes: BTreeMap<(&'static str, &'static str), u64>,
    latencies_us: BTreeMap<&'static str, Vec<u64>>,
    sent: BTreeMap<&'static str, u64>,
    genuine: (u64, u64),
    impostor: (u64, u64),
    rank_one: (u64, u64),
    failures: u64,
}

struct Shared {
    sim: Simulation,
    next_new: AtomicU64,
    known: Mutex<Vec<u64>>,
    tally: Mutex<Tally>,
    answered: AtomicU64,
}

impl Shared {
    fn pick_known(&self, rng: &mut impl Rng) -> Option<u64> {
        let extra = self.known.lock().unwrap_or_else(|p| p.into_inner());
        let total = self.sim.enrolled + extra.len() as u64;
        if total == 0 {
            return None;
        }
        let i = rng.random_range(0..total);
        Some(if i < self.sim.enrolled {
            i
        } else {
            extra[(i - self.sim.enrolled) as usize]
        })
    }
}

/// Runs the simulation and returns its report.
pub async fn run(sim: Simulation) -> Result<Report, GateError> {
    let mut clients = Vec::with_capacity(sim.gates);
    for n in 1..=sim.gates {
        let stem = sim.certs.join("gates").join(pki::gate_name(n));
        let client = GateClient::connect(
            sim.server,
            &sim.server_name,
            &sim.certs.join("ca.pem"),
            &stem.with_extension("pem"),
            &stem.with_extension("key"),
        )
        .await?;
        clients.push(Arc::new(client));
    }
    let shared = Arc::new(Shared {
        next_new: AtomicU64::new(sim.first_new.max(sim.enrolled)),
        known: Mutex::new(Vec::new()),
        tally: Mutex::new(Tally::default()),
        answered: AtomicU64::new(0),
        sim: sim.clone(),
    });
    let bar = progress_bar(&sim);
    let started = Instant::now();
    let per_gate_rate = sim.rate_per_s / sim.gates.max(1) as f64;
    let mut gate_tasks = Vec::new();
    for (g, client) in clients.iter().enumerate() {
        let shared = Arc::clone(&shared);
        let client = Arc::clone(client);
        let seed = sim.seed.wrapping_add(g as u64 * 7919);
        gate_tasks.push(tokio::spawn(gate_loop(
            client,
            shared,
            per_gate_rate,
            started,
            seed,
        )));
    }
    let ticker = {
        let shared = Arc::clone(&shared);
        let bar = bar.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                bar.set_position(started.elapsed().as_millis() as u64);
                bar.set_message(format!(
                    "answered {}",
                    shared.answered.load(Ordering::Relaxed)
                ));
            }
        })
    };
    let mut requests = Vec::new();
    for task in gate_tasks {
        requests.extend(task.await.unwrap_or_default());
    }
    for request in requests {
        let _ = request.await;
    }
    let wall = started.elapsed();
    ticker.abort();
    bar.finish_and_clear();
    for client in clients {
        if let Ok(client) = Arc::try_unwrap(client) {
            client.close().await;
        }
    }
    let tally = std::mem::take(&mut *shared.tally.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(Report::new(&sim, tally, wall))
}

fn progress_bar(sim: &Simulation) -> indicatif::ProgressBar {
    if !sim.progress {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(sim.duration.as_millis() as u64);
    let style = indicatif::ProgressStyle::with_template(
        "{spinner} gates {prefix} [{bar:30}] {elapsed_precise} {msg}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(sim.gates.to_string());
    bar
}

/// Sends this gate's share of the load, open-loop; returns the request tasks still running.
async fn gate_loop(
    client: Arc<GateClient>,
    shared: Arc<Shared>,
    rate_per_s: f64,
    started: Instant,
    seed: u64,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let gaps = Exp::new(rate_per_s.max(1e-9)).expect("a positive rate");
    let mut at = Duration::from_secs_f64(rng.sample(gaps));
    let mut running = Vec::new();
    let mut sent = 0u64;
    while at < shared.sim.duration {
        tokio::time::sleep_until((started + at).into()).await;
        let request_seed = rng.random();
        let client = Arc::clone(&client);
        let shared = Arc::clone(&shared);
        sent += 1;
        running.push(tokio::spawn(async move {
            one_request(&client, &shared, request_seed).await
        }));
        if running.len() > 4096 {
            running.retain(|t| !t.is_finished());
        }
        at += Duration::from_secs_f64(rng.sample(gaps));
    }
    let _ = sent;
    running
}

enum Intent {
    Enrol(u64),
    Verify { claimed: u64, genuine: bool },
    Identify(u64),
}

async fn one_request(client: &GateClient, shared: &Shared, seed: u64) {
    let sim = &shared.sim;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let total = sim.mix.enrol + sim.mix.verify + sim.mix.identify;
    let roll = rng.random_range(0..total);
    let known = shared.pick_known(&mut rng);
    let intent = match (roll, known) {
        (r, _) if r < sim.mix.enrol => {
            Intent::Enrol(shared.next_new.fetch_add(1, Ordering::Relaxed))
        }
        (_, None) => Intent::Enrol(shared.next_new.fetch_add(1, Ordering::Relaxed)),
        (r, Some(claimed)) if r < sim.mix.enrol + sim.mix.verify => Intent::Verify {
            claimed,
            genuine: !rng.random_bool(sim.impostor_share),
        },
        (_, Some(who)) => Intent::Identify(who),
    };
    let template = |values| proto::Template {
        modality: proto::Modality::Face as i32,
        model_id: sim.model_id.clone(),
        values,
    };
    let (name, operation) = match &intent {
        Intent::Enrol(i) => (
            "enrol",
            Operation::Enrol(proto::EnrolRequest {
                person_id: sim.population.person_id(*i),
                templates: vec![template(sim.population.template(*i))],
                ..Default::default()
            }),
        ),
        Intent::Verify { claimed, genuine } => {
            let who = if *genuine {
                *claimed
            } else {
                impostor_of(*claimed, shared, &mut rng)
            };
            (
                "verify",
                Operation::Verify(proto::VerifyRequest {
                    person_id: sim.population.person_id(*claimed),
                    probe: Some(template(sim.population.probe(who, &mut rng))),
                    ..Default::default()
                }),
            )
        }
        Intent::Identify(who) => (
            "identify",
            Operation::Identify(proto::IdentifyRequest {
                probe: Some(template(sim.population.probe(*who, &mut rng))),
                k: sim.identify_k,
                ..Default::default()
            }),
        ),
    };
    let request = proto::Request {
        request_id: seed,
        deadline_ms: sim.deadline_ms,
        operation: Some(operation),
    };
    let sent_at = Instant::now();
    let answer = client.call(&request).await;
    let took_us = sent_at.elapsed().as_micros() as u64;
    shared.answered.fetch_add(1, Ordering::Relaxed);

    let mut tally = shared.tally.lock().unwrap_or_else(|p| p.into_inner());
    *tally.sent.entry(name).or_default() += 1;
    let response = match answer {
        Ok(response) => response,
        Err(error) => {
            tracing::debug!(%error, "request failed");
            tally.failures += 1;
            return;
        }
    };
    let outcome = if response.outcome == proto::Outcome::Ok as i32 {
        "ok"
    } else {
        reason_label(response.reason())
    };
    *tally.outcomes.entry((name, outcome)).or_default() += 1;
    tally.latencies_us.entry(name).or_default().push(took_us);
    match (intent, response.result) {
        (Intent::Enrol(i), Some(Answer::Enrol(_))) => {
            drop(tally);
            shared
                .known
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(i);
        }
        (Intent::Verify { genuine, .. }, Some(Answer::Verify(v))) => {
            let matched = v.decision == proto::Decision::Match as i32;
            let counts = if genuine {
                &mut tally.genuine
            } else {
                &mut tally.impostor
            };
            counts.0 += u64::from(matched);
            counts.1 += 1;
        }
        (Intent::Identify(who), Some(Answer::Identify(r))) => {
            let hit = r
                .candidates
                .first()
                .is_some_and(|c| c.person_id == sim.population.person_id(who));
            tally.rank_one.0 += u64::from(hit);
            tally.rank_one.1 += 1;
        }
        _ => {}
    }
}

/// Another enrolled traveller than `claimed`, to play an impostor.
fn impostor_of(claimed: u64, shared: &Shared, rng: &mut impl Rng) -> u64 {
    for _ in 0..8 {
        if let Some(other) = shared.pick_known(rng)
            && other != claimed
        {
            return other;
        }
    }
    // Nobody else is enrolled yet: a traveller never enrolled plays the impostor.
    u64::MAX - claimed
}

/// What a simulation saw.
#[derive(Debug)]
pub struct Report {
    gates: usize,
    offered_per_s: f64,
    wall: Duration,
    rows: Vec<ReportRow>,
    /// Genuine verifications accepted, of all genuine verifications answered.
    pub genuine_accepted: (u64, u64),
    /// Impostor verifications accepted, of all impostor verifications answered.
    pub impostor_accepted: (u64, u64),
    /// Identifications whose first candidate was the traveller, of all answered.
    pub rank_one_hits: (u64, u64),
    /// Requests that got no answer (connection or stream failures).
    pub failures: u64,
}

/// One operation's line of the report.
#[derive(Debug)]
pub struct ReportRow {
    /// The operation ("enrol", "verify", "identify", "all").
    pub operation: &'static str,
    /// Requests sent.
    pub sent: u64,
    /// Answers by outcome ("ok" or a refusal reason).
    pub outcomes: BTreeMap<&'static str, u64>,
    /// Latency percentiles in milliseconds: p50, p90, p99, p99.9, max.
    pub latency_ms: [f64; 5],
}

impl Report {
    fn new(sim: &Simulation, tally: Tally, wall: Duration) -> Report {
        let mut rows = Vec::new();
        let mut all_latencies = Vec::new();
        let mut all_outcomes = BTreeMap::new();
        let mut all_sent = 0;
        for operation in ["enrol", "verify", "identify"] {
            let sent = tally.sent.get(operation).copied().unwrap_or(0);
            let mut latencies = tally
                .latencies_us
                .get(operation)
                .cloned()
                .unwrap_or_default();
            let outcomes: BTreeMap<_, _> = tally
                .outcomes
                .iter()
                .filter(|((op, _), _)| *op == operation)
                .map(|((_, outcome), n)| (*outcome, *n))
                .collect();
            for (outcome, n) in &outcomes {
                *all_outcomes.entry(*outcome).or_insert(0) += n;
            }
            all_sent += sent;
            all_latencies.extend_from_slice(&latencies);
            if sent > 0 {
                rows.push(ReportRow {
                    operation,
                    sent,
                    outcomes,
                    latency_ms: percentiles(&mut latencies),
                });
            }
        }
        rows.push(ReportRow {
            operation: "all",
            sent: all_sent,
            outcomes: all_outcomes,
            latency_ms: percentiles(&mut all_latencies),
        });
        Report {
            gates: sim.gates,
            offered_per_s: sim.rate_per_s,
            wall,
            rows,
            genuine_accepted: tally.genuine,
            impostor_accepted: tally.impostor,
            rank_one_hits: tally.rank_one,
            failures: tally.failures,
        }
    }

    /// The per-operation rows, ending with "all".
    pub fn rows(&self) -> &[ReportRow] {
        &self.rows
    }

    /// The row of `operation`.
    pub fn row(&self, operation: &str) -> Option<&ReportRow> {
        self.rows.iter().find(|r| r.operation == operation)
    }

    /// Answers per second over the run.
    pub fn throughput_per_s(&self) -> f64 {
        let answered: u64 = self
            .row("all")
            .map(|r| r.outcomes.values().sum())
            .unwrap_or(0);
        answered as f64 / self.wall.as_secs_f64().max(1e-9)
    }
}

fn percentiles(latencies_us: &mut [u64]) -> [f64; 5] {
    if latencies_us.is_empty() {
        return [0.0; 5];
    }
    latencies_us.sort_unstable();
    let at = |q: f64| {
        let i = ((latencies_us.len() as f64 * q).ceil() as usize).clamp(1, latencies_us.len()) - 1;
        latencies_us[i] as f64 / 1000.0
    };
    [at(0.5), at(0.9), at(0.99), at(0.999), at(1.0)]
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} gates, offered {:.0} requests/s for {:.1} s; answered {:.0}/s",
            self.gates,
            self.offered_per_s,
            self.wall.as_secs_f64(),
            self.throughput_per_s()
        )?;
        writeln!(
            f,
            "{:<9} {:>8} {:>8} {:>8}  {:>8} {:>8} {:>8} {:>8} {:>8}  refusals",
            "operation",
            "sent",
            "answered",
            "ok",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms"
        )?;
        for row in &self.rows {
            let answered: u64 = row.outcomes.values().sum();
            let ok = row.outcomes.get("ok").copied().unwrap_or(0);
            let refusals: Vec<String> = row
                .outcomes
                .iter()
                .filter(|(o, _)| **o != "ok")
                .map(|(o, n)| format!("{o}={n}"))
                .collect();
            let [p50, p90, p99, p999, max] = row.latency_ms;
            writeln!(
                f,
                "{:<9} {:>8} {:>8} {:>8}  {p50:>8.2} {p90:>8.2} {p99:>8.2} {p999:>8.2} {max:>8.2}  {}",
                row.operation,
                row.sent,
                answered,
                ok,
                if refusals.is_empty() {
                    "-".into()
                } else {
                    refusals.join(" ")
                }
            )?;
        }
        let rate = |(hit, all): (u64, u64)| {
            if all == 0 {
                0.0
            } else {
                100.0 * hit as f64 / all as f64
            }
        };
        writeln!(
            f,
            "decisions: genuine accepted {}/{} ({:.2}%), impostors accepted {}/{} ({:.2}%), \
             identify rank-1 {}/{} ({:.2}%)",
            self.genuine_accepted.0,
            self.genuine_accepted.1,
            rate(self.genuine_accepted),
            self.impostor_accepted.0,
            self.impostor_accepted.1,
            rate(self.impostor_accepted),
            self.rank_one_hits.0,
            self.rank_one_hits.1,
            rate(self.rank_one_hits),
        )?;
        if self.failures > 0 {
            writeln!(
                f,
                "requests without an answer (connection or stream failure): {}",
                self.failures
            )?;
        }
        Ok(())
    }
}
