// Package metrics is fleetd's Prometheus instrumentation. Labels stay bounded:
// outcomes, S3 operations and status codes, never spec ids.
package metrics

import (
	"net/http"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics holds every fleetd metric. The zero value is not usable; use New.
type Metrics struct {
	reg            *prometheus.Registry
	cellsStarted   prometheus.Counter
	cellsFinished  *prometheus.CounterVec
	cellsInFlight  prometheus.Gauge
	cellDuration   prometheus.Histogram
	claimConflicts prometheus.Counter
	gateSkips      prometheus.Counter
	s3Requests     *prometheus.CounterVec
	s3Errors       *prometheus.CounterVec
	s3Latency      *prometheus.HistogramVec
	rateWait       prometheus.Counter
	leaseRenewals  prometheus.Counter
	leaseTakeovers prometheus.Counter
	sessionsEnded  prometheus.Counter
	cellHolds      *prometheus.CounterVec
	cellsFrozen    prometheus.Gauge
	lastPoll       prometheus.Gauge
	slowDowns      prometheus.Counter
	bounced        prometheus.Counter
	hostBroken     prometheus.Gauge
	startFailures  prometheus.Counter
	paused         prometheus.Gauge
	pending        prometheus.Gauge
	oldestPending  prometheus.Gauge
	depth          atomic.Pointer[polledDepth]
	fleetLeases    prometheus.Gauge
	storeInfo      *prometheus.GaugeVec
	notifyUp       prometheus.Gauge
	notifyEvents   *prometheus.CounterVec

	// Per lane, with CELLOS_FLEET_LANES (Lane*): the gauges above then
	// sum (depth) or combine (paused: all lanes) the lanes.
	lanePaused  *prometheus.GaugeVec
	lanePending *prometheus.GaugeVec
	laneOldest  *prometheus.GaugeVec
	laneMu      sync.Mutex
	lanes       map[string]laneState
}

type laneState struct {
	paused  bool
	pending int
	oldest  time.Duration
}

// New registers fleetd's metrics, Go runtime and process collectors included,
// on a registry of its own. outcomes are the values of
// fleetd_cells_finished_total's outcome label (protocol.EndingLabels): each
// is shown at zero from the start, so rates work before the first event.
// Metrics defines none of its own, so the protocol's set is the only one.
func New(concurrency int, version, revision string, outcomes ...string) *Metrics {
	reg := prometheus.NewRegistry()
	f := func(c prometheus.Collector) { reg.MustRegister(c) }
	m := &Metrics{reg: reg}
	m.cellsStarted = prometheus.NewCounter(prometheus.CounterOpts{Name: "fleetd_cells_started_total", Help: "Supervisors started."})
	m.cellsFinished = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fleetd_cells_finished_total", Help: "Specs finished on this node, by outcome."}, []string{"outcome"})
	m.cellsInFlight = prometheus.NewGauge(prometheus.GaugeOpts{Name: "fleetd_cells_in_flight", Help: "Supervisors running now."})
	m.cellDuration = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "fleetd_cell_duration_seconds", Help: "Supervisor run time.",
		Buckets: prometheus.ExponentialBuckets(0.01, 4, 10)}) // 10 ms .. ~44 min
	m.claimConflicts = prometheus.NewCounter(prometheus.CounterOpts{Name: "fleetd_claim_conflicts_total", Help: "Claims lost to another node (normal with several nodes)."})
	m.gateSkips = prometheus.NewCounter(prometheus.CounterOpts{Name: "fleetd_gate_skips_total", Help: "Specs left for another pool by the placement gate."})
	m.s3Requests = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fleetd_s3_requests_total", Help: "S3 request attempts, by operation and HTTP status code."}, []string{"operation", "code"})
	m.s3Errors = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fleetd_s3_errors_total",
		Help: "S3 request attempts that failed: no response, 429, 5xx, or a 4xx other than the protocol's expected 304, 404, 409 and 412 (those are in fleetd_s3_requests_total), by operation and code."}, []string{"operation", "code"})
	m.s3Latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "fleetd_s3_request_duration_seconds", Help: "S3 request attempt latency.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 3, 12)}, []string{"operation"}) // 0.5 ms .. ~89 s
	m.rateWait = prometheus.NewCounter(prometheus.CounterOpts{Name: "fleetd_s3_rate_limit_wait_seconds_total", Help: "Time S3 requests spent waiting for the rate limiter."})
	m.leaseRenewals = prometheus.NewCounter(prometheus.CounterOpts{Name: "fleetd_lease_renewals_total", Help: "Lease renewals written."})
	m.leaseTakeovers = prometheus.NewCounter(prometheus.CounterOpts{Name: "fleetd_lease_takeovers_total", Help: "Stale leases or lease-less claims taken over by this node."})
	m.sessionsEnded = prometheus.NewCounter(prometheus.CounterOpts{Name: "fleetd_sessions_ended_total", Help: "Stale sessions of other agents ended by this node (their leases then taken over)."})
	m.cellHolds = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fleetd_cell_holds_total",
		Help: "Cells held while the session could not be renewed, by event: frozen, thawed, killed (taken over while frozen), result_held (ended while the store was unreachable)."}, []string{"event"})
	m.cellsFrozen = prometheus.NewGauge(prometheus.GaugeOpts{Name: "fleetd_cells_frozen", Help: "Cells frozen now, waiting for the session to be renewed."})
	m.lastPoll = prometheus.NewGauge(prometheus.GaugeOpts{Name: "fleetd_last_poll_success_timestamp_seconds", Help: "Unix time of the last page of pending/ listed successfully."})
	m.slowDowns = prometheus.NewCounter(prometheus.CounterOpts{Name: "fleetd_s3_slowdowns_total", Help: "S3 answers asking this agent to slow down (503 SlowDown, 429); each raises the agent's pause between requests."})
	m.bounced = prometheus.NewCounter(prometheus.CounterOpts{Name: "fleetd_lister_bounced_listings_total",
		Help: "Listings of pending/ that handed out only keys already tried at the same ETag (claimed elsewhere, unreadable); each is followed by a poll interval's wait."})
	m.hostBroken = prometheus.NewGauge(prometheus.GaugeOpts{Name: "fleetd_host_broken",
		Help: "1 while this host cannot start the supervisor and so claims nothing (see fleetd_supervisor_start_failures_total), else 0."})
	m.startFailures = prometheus.NewCounter(prometheus.CounterOpts{Name: "fleetd_supervisor_start_failures_total",
		Help: "Supervisors that could not be started (binary missing or not executable, temp dir full, fork refused); their specs went back to pending/."})
	m.paused = prometheus.NewGauge(prometheus.GaugeOpts{Name: "fleetd_queue_paused",
		Help: "1 while the lane is paused (fleetd pause): this agent claims nothing, else 0."})
	m.pending = prometheus.NewGauge(prometheus.GaugeOpts{Name: "fleetd_queue_pending",
		Help: "Specs in the lane's pending/ at this agent's last poll (no extra request: the poll's own listing; a lower bound when the poll stopped early)."})
	m.oldestPending = prometheus.NewGauge(prometheus.GaugeOpts{Name: "fleetd_queue_oldest_pending_seconds",
		Help: "Age, by the server's clock, of the oldest spec that poll listed (0: none)."})
	m.fleetLeases = prometheus.NewGauge(prometheus.GaugeOpts{Name: "fleetd_fleet_leases",
		Help: "Specs held by a lease across the fleet (in flight, being filed or recovered) at this agent's last recovery scan; agents take turns scanning, so take the max over agents of the latest."})
	m.storeInfo = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "fleetd_store_info",
		Help: "1 for the delete mode the store self-test chose: conditional (DELETE with If-Match) or versioned (deletes name version ids); absent until the self-test passed."}, []string{"mode"})
	m.notifyUp = prometheus.NewGauge(prometheus.GaugeOpts{Name: "fleetd_notify_connected",
		Help: "1 while bucket notifications flow (pending/ is then polled as a safety net), else 0; always 0 with CELLOS_FLEET_NOTIFY_URL unset."})
	m.notifyEvents = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fleetd_notify_events_total",
		Help: "Notification messages received, by result: hint (a key under pending/, handed to a worker), ignored (this bucket, another key or a test event), dropped (garbled, oversized or another bucket's)."}, []string{"result"})
	m.lanePaused = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "fleetd_lane_paused",
		Help: "With CELLOS_FLEET_LANES: 1 while the lane is paused, else 0 (\"_\": the prefix's own lane)."}, []string{"lane"})
	m.lanePending = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "fleetd_lane_pending",
		Help: "With CELLOS_FLEET_LANES: specs in the lane's pending/ at this agent's last poll of it."}, []string{"lane"})
	m.laneOldest = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "fleetd_lane_oldest_pending_seconds",
		Help: "With CELLOS_FLEET_LANES: age of the oldest spec the lane's last poll listed."}, []string{"lane"})
	m.lanes = map[string]laneState{}
	conc := prometheus.NewGauge(prometheus.GaugeOpts{Name: "fleetd_concurrency", Help: "Configured CELLOS_FLEET_CONCURRENCY."})
	conc.Set(float64(concurrency))
	info := prometheus.NewGauge(prometheus.GaugeOpts{Name: "fleetd_build_info", Help: "Always 1; the labels say which build runs.",
		ConstLabels: prometheus.Labels{"version": version, "revision": revision, "goversion": runtime.Version()}})
	info.Set(1)
	for _, c := range []prometheus.Collector{m.cellsStarted, m.cellsFinished, m.cellsInFlight, m.cellDuration, m.claimConflicts, m.gateSkips,
		m.s3Requests, m.s3Errors, m.s3Latency, m.rateWait, m.leaseRenewals, m.leaseTakeovers, m.sessionsEnded, m.cellHolds, m.cellsFrozen, m.lastPoll, m.slowDowns, m.bounced, m.hostBroken, m.startFailures,
		m.paused, m.pending, m.oldestPending, m.fleetLeases, m.storeInfo, m.notifyUp, m.notifyEvents, conc, info,
		m.lanePaused, m.lanePending, m.laneOldest,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})} {
		f(c)
	}
	for _, o := range outcomes {
		m.cellsFinished.WithLabelValues(o)
	}
	for _, e := range []string{"frozen", "thawed", "killed", "result_held"} {
		m.cellHolds.WithLabelValues(e)
	}
	return m
}

// Handler serves the metrics in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// CellStarted counts a supervisor start.
func (m *Metrics) CellStarted() {
	m.cellsStarted.Inc()
	m.cellsInFlight.Inc()
}

// CellEnded records a supervisor's exit after d.
func (m *Metrics) CellEnded(d time.Duration) {
	m.cellsInFlight.Dec()
	m.cellDuration.Observe(d.Seconds())
}

// Finished counts a spec that left this node with outcome, one of New's
// outcomes.
func (m *Metrics) Finished(outcome string) { m.cellsFinished.WithLabelValues(outcome).Inc() }

// ClaimConflict counts a claim lost to another node.
func (m *Metrics) ClaimConflict() { m.claimConflicts.Inc() }

// GateSkip counts a spec left for another pool.
func (m *Metrics) GateSkip() { m.gateSkips.Inc() }

// LeaseRenewed counts a lease renewal.
func (m *Metrics) LeaseRenewed() { m.leaseRenewals.Inc() }

// LeaseTakenOver counts a takeover by this node.
func (m *Metrics) LeaseTakenOver() { m.leaseTakeovers.Inc() }

// SessionEnded counts another agent's stale session ended by this node.
func (m *Metrics) SessionEnded() { m.sessionsEnded.Inc() }

// ResultHeld counts a result held in memory until the store answers.
func (m *Metrics) ResultHeld() { m.cellHolds.WithLabelValues("result_held").Inc() }

// CellHold counts a cell held for the session: "frozen", "thawed", "killed"
// or "result_held"; frozen says how many are frozen now.
func (m *Metrics) CellHold(event string, frozen int) {
	m.cellHolds.WithLabelValues(event).Inc()
	m.cellsFrozen.Set(float64(frozen))
}

// NotifyConnected records whether bucket notifications flow.
func (m *Metrics) NotifyConnected(up bool) {
	v := 0.0
	if up {
		v = 1
	}
	m.notifyUp.Set(v)
}

// NotifyEvent counts a notification message read, by result.
func (m *Metrics) NotifyEvent(result string) { m.notifyEvents.WithLabelValues(result).Inc() }

// Polled records a page of pending/ listed successfully.
func (m *Metrics) Polled(t time.Time) { m.lastPoll.Set(float64(t.UnixNano()) / 1e9) }

// ListingBounced counts a listing whose keys all bounced.
func (m *Metrics) ListingBounced() { m.bounced.Inc() }

// S3Request records one S3 request attempt; status 0 means no response.
func (m *Metrics) S3Request(operation string, status int, d time.Duration) {
	code := "none"
	if status > 0 {
		code = strconv.Itoa(status)
	}
	m.s3Requests.WithLabelValues(operation, code).Inc()
	if isS3Error(status) {
		m.s3Errors.WithLabelValues(operation, code).Inc()
	}
	m.s3Latency.WithLabelValues(operation).Observe(d.Seconds())
}

// SlowDown counts an S3 answer asking this agent to slow down.
func (m *Metrics) SlowDown() { m.slowDowns.Inc() }

// isS3Error reports whether an answer is one an operator should hear about.
// 404 (gone), 412 (a conditional write lost), 409 (a concurrent conditional
// write, retried) and 304 are how the claim protocol learns the queue's state:
// two healthy nodes see them every few seconds.
func isS3Error(status int) bool {
	switch {
	case status == 0, status == http.StatusTooManyRequests, status >= 500:
		return true
	case status == http.StatusNotModified, status == http.StatusNotFound,
		status == http.StatusConflict, status == http.StatusPreconditionFailed:
		return false
	}
	return status >= 400
}

// SupervisorStartFailed counts a supervisor that could not be started.
func (m *Metrics) SupervisorStartFailed() { m.startFailures.Inc() }

// SetHostBroken says whether this host can start the supervisor.
func (m *Metrics) SetHostBroken(broken bool) {
	v := 0.0
	if broken {
		v = 1
	}
	m.hostBroken.Set(v)
}

// SetPaused records whether the lane is paused.
func (m *Metrics) SetPaused(paused bool) {
	v := 0.0
	if paused {
		v = 1
	}
	m.paused.Set(v)
}

// QueueDepth records what the last poll of pending/ saw.
func (m *Metrics) QueueDepth(pending int, oldest time.Duration) {
	m.pending.Set(float64(pending))
	m.oldestPending.Set(oldest.Seconds())
	m.depth.Store(&polledDepth{pending: pending, oldest: oldest})
}

// polledDepth is what the last poll of pending/ saw.
type polledDepth struct {
	pending int
	oldest  time.Duration
}

// Depth returns what the last poll of pending/ saw; ok is false before the
// first poll.
func (m *Metrics) Depth() (pending int, oldest time.Duration, ok bool) {
	d := m.depth.Load()
	if d == nil {
		return 0, 0, false
	}
	return d.pending, d.oldest, true
}

// LanePaused records whether one lane of several is paused; fleetd_queue_paused
// is then 1 only while every lane is.
func (m *Metrics) LanePaused(lane string, paused bool) {
	m.laneMu.Lock()
	defer m.laneMu.Unlock()
	st := m.lanes[lane]
	st.paused = paused
	m.lanes[lane] = st
	m.lanePaused.WithLabelValues(laneLabel(lane)).Set(boolValue(paused))
	all := true
	for _, s := range m.lanes {
		all = all && s.paused
	}
	m.SetPaused(all)
}

// LaneDepth records what the last poll of one lane of several saw;
// fleetd_queue_pending is then their sum, and the oldest age their oldest.
func (m *Metrics) LaneDepth(lane string, pending int, oldest time.Duration) {
	m.laneMu.Lock()
	defer m.laneMu.Unlock()
	st := m.lanes[lane]
	st.pending, st.oldest = pending, oldest
	m.lanes[lane] = st
	m.lanePending.WithLabelValues(laneLabel(lane)).Set(float64(pending))
	m.laneOldest.WithLabelValues(laneLabel(lane)).Set(oldest.Seconds())
	total, oldestAll := 0, time.Duration(0)
	for _, s := range m.lanes {
		total += s.pending
		oldestAll = max(oldestAll, s.oldest)
	}
	m.QueueDepth(total, oldestAll)
}

// laneLabel names the prefix's own lane "_", as CELLOS_FLEET_LANES does.
func laneLabel(lane string) string {
	if lane == "" {
		return "_"
	}
	return lane
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// StoreMode records the delete mode the store self-test chose.
func (m *Metrics) StoreMode(mode string) { m.storeInfo.WithLabelValues(mode).Set(1) }

// FleetLeases records the leases a recovery scan listed.
func (m *Metrics) FleetLeases(n int) { m.fleetLeases.Set(float64(n)) }

// RateLimitWaited adds time spent waiting for the S3 rate limiter.
func (m *Metrics) RateLimitWaited(d time.Duration) { m.rateWait.Add(d.Seconds()) }
