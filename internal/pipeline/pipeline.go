// Package pipeline is fleetd's work loop: a lister goroutine feeds pending
// keys into a channel drained by N workers, each taking a key through the
// stages peek, gate, claim, run and finish (stages.go).
package pipeline

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sourcegraph/conc"
	"github.com/sourcegraph/conc/panics"

	"github.com/cellos/fleetd/internal/drain"
	"github.com/cellos/fleetd/internal/exec"
	"github.com/cellos/fleetd/internal/lister"
	"github.com/cellos/fleetd/internal/metrics"
	"github.com/cellos/fleetd/internal/protocol"
	"github.com/cellos/fleetd/internal/store"
)

// Store is the S3 queue as the pipeline reads it; *store.Store implements
// it. Every write goes through the protocol.
type Store interface {
	store.Lister
	store.Getter
}

var _ Store = (*store.Store)(nil)

// Runner runs the supervisor on one spec file, calling started (if not nil)
// once it runs; *exec.Runner implements it.
type Runner interface {
	Run(ctx context.Context, specPath, specID string, started func(exec.Cell)) exec.Result
}

var _ Runner = (*exec.Runner)(nil)

// Outputs keeps the tail of each running cell's output, fed by the runner's
// relay; *output.Tails implements it.
type Outputs interface {
	Open(id string)
	Take(id string) (body []byte, truncated, ok bool)
}

// intake is what the workers tell the lister about the keys it handed out;
// *lister.Lister implements it.
type intake interface {
	Stale(lister.Item)
	Skip(key, etag string)
	Done(lister.Item)
}

var _ intake = (*lister.Lister)(nil)

// Config is what the pipeline needs to know. Durations must be positive, except
// CellTimeout where zero means none.
type Config struct {
	Node         string
	Pool         string
	Layout       store.Layout
	Concurrency  int
	PollInterval time.Duration
	MaxSpecBytes int64
	MaxAttempts  int
	CellTimeout  time.Duration
	// Freeze: a cell whose claim lapses (the session not renewed in time) is
	// frozen until it is renewed, and killed if the claim was taken over
	// meanwhile; otherwise it is stopped and the spec returned to pending/.
	Freeze bool
	// Retries is how many times a failed run is retried when its spec sets
	// no limit of its own; RetryBackoff is the first retry's backoff
	// (doubling, full jitter, see backoff). Jitter, if set, draws the
	// jitter: a number in [0, n); nil: math/rand/v2.
	Retries      int
	RetryBackoff time.Duration
	Jitter       func(n int64) int64
	// Hints, if set, are bucket notifications: keys handed out as they come,
	// the poll every NetInterval while they flow (see lister.Config.Hints).
	Hints       lister.Hints
	NetInterval time.Duration
	// Output, if set, keeps each cell's output while it runs; it goes to
	// output/<id>.txt with the result.
	Output Outputs
	// Lane, with MultiLane, names this pipeline's lane among several run
	// by one Lanes: its depth and pause are then reported per lane.
	Lane      string
	MultiLane bool
	// Rand is the lister's source of jitter (see lister.Config.Rand).
	Rand    *rand.Rand
	Logger  *slog.Logger
	Metrics *metrics.Metrics
}

// Pipeline moves specs from pending/ to completed/ or failed/.
type Pipeline struct {
	cfg    Config
	store  Store
	proto  Protocol
	runner Runner
	drain  *drain.Drainer
	lister *lister.Lister
	intake intake // the lister, but for tests
	host   *host
	log    *slog.Logger
	m      *metrics.Metrics
	paused atomic.Bool
	cells  atomic.Int64 // supervisors running now
	frozen atomic.Int64 // of which frozen
	idle   idleWorkers
	polled atomic.Int64 // unix nanos of the last successful listing of pending/
	depth  atomic.Int64 // specs the last listing of pending/ counted
	listed atomic.Bool  // a listing of pending/ has ended (depth is known)
}

// New returns a pipeline. It starts nothing until Run. A nil cfg.Metrics gets
// a private set nobody serves.
func New(cfg Config, storage Store, proto *protocol.Protocol, runner Runner, d *drain.Drainer) *Pipeline {
	return newPipeline(cfg, storage, claims{proto}, runner, d)
}

func newPipeline(cfg Config, storage Store, proto Protocol, runner Runner, d *drain.Drainer) *Pipeline {
	if cfg.Metrics == nil {
		cfg.Metrics = metrics.New(cfg.Concurrency, "", "")
	}
	p := &Pipeline{cfg: cfg, store: storage, proto: proto, runner: runner, drain: d, log: cfg.Logger, m: cfg.Metrics,
		host: newHost(cfg.PollInterval, cfg.Logger, cfg.Metrics), idle: newIdleWorkers()}
	p.lister = lister.New(lister.Config{
		List:     p.listPending,
		ID:       func(key string) (string, error) { return cfg.Layout.ParseID(store.Pending, key) },
		Interval: cfg.PollInterval,
		Logger:   cfg.Logger,
		Bounced:  cfg.Metrics.ListingBounced,
		PauseKey: cfg.Layout.PauseKey(),
		Paused:   p.setPaused,
		Rand:     cfg.Rand,

		Hints:       cfg.Hints,
		NetInterval: cfg.NetInterval,
		Idle:        p.idle.wait,
	})
	p.intake = p.lister
	return p
}

// Run works the queue until the drainer's intake closes, then waits for every
// worker to finish. Cells already started run to their end unless the
// drainer's Work context ends.
func (p *Pipeline) Run() {
	// Unbuffered: the lister's send completes only when a worker takes the
	// key, so the number of workers is the one bound on work in flight.
	keys := make(chan lister.Item)
	var workers conc.WaitGroup
	for range p.cfg.Concurrency {
		workers.Go(func() { p.work(keys) })
	}
	p.lister.Run(p.drain.Intake(), keys)
	close(keys) // intake closed: the workers finish what they hold and return
	workers.Wait()
}

// work takes keys through the stages until keys is closed. A panic fails
// only the key it happened on.
func (p *Pipeline) work(keys <-chan lister.Item) {
	for {
		p.idle.add(1)
		it, ok := <-keys
		p.idle.add(-1)
		if !ok {
			return
		}
		p.handle(it)
	}
}

// handle takes one key through the stages. A panic fails only that key.
func (p *Pipeline) handle(it lister.Item) {
	var pc panics.Catcher
	pc.Try(func() { p.process(it) })
	if r := pc.Recovered(); r != nil {
		// A claim caught mid-way keeps its lease; recovery returns it.
		p.log.Error("worker panic", "event", "worker.panic", "spec_id", it.ID, "err", r.AsError())
	}
	p.intake.Done(it)
}

// HostBroken returns why this host cannot start the supervisor, nil when it
// can. While it cannot, the node claims nothing but a probe now and then.
func (p *Pipeline) HostBroken() error { return p.host.err() }

// Cells returns the number of supervisors running now.
func (p *Pipeline) Cells() int { return int(p.cells.Load()) }

// LastPoll returns when a page of pending/ was last listed successfully (zero:
// never).
func (p *Pipeline) LastPoll() time.Time {
	if n := p.polled.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}

// listPending lists pending/ for the lister. Every page fetched is a
// successful poll: a busy node may spend an interval on one page waiting for
// a free worker, and it is still polling.
func (p *Pipeline) listPending(ctx context.Context, fn func([]lister.Entry) error) error {
	// The depth gauges come from this listing: no request of their own.
	count, oldest := 0, time.Duration(0)
	defer func() {
		p.depth.Store(int64(count))
		p.listed.Store(true)
		if p.cfg.MultiLane {
			p.m.LaneDepth(p.cfg.Lane, count, oldest)
			return
		}
		p.m.QueueDepth(count, oldest)
	}()
	promote := newPromotions(ctx, p)
	return p.store.List(ctx, p.cfg.Layout.Dir(store.Pending), func(page store.Page) error {
		now := time.Now()
		p.polled.Store(now.UnixNano())
		p.m.Polled(now)
		entries := make([]lister.Entry, 0, len(page.Objects))
		for _, o := range page.Objects {
			if strings.HasPrefix(o.Key, p.cfg.Layout.DelayedDir()) {
				// Delayed: not work until due (delayed.go).
				if e, ok := promote.due(o, page.ServerTime); ok {
					entries = append(entries, e)
				}
				continue
			}
			entries = append(entries, lister.Entry{Key: o.Key, ETag: o.ETag})
			if _, err := p.cfg.Layout.ParseID(store.Pending, o.Key); err == nil {
				count++
				oldest = max(oldest, page.ServerTime.Sub(o.LastModified))
			}
		}
		return fn(entries)
	})
}

// setPaused is told after each listing whether the lane is paused; it says
// so once per change.
func (p *Pipeline) setPaused(paused bool) {
	if p.paused.Swap(paused) == paused {
		return
	}
	if p.cfg.MultiLane {
		p.m.LanePaused(p.cfg.Lane, paused)
	} else {
		p.m.SetPaused(paused)
	}
	if paused {
		p.log.Warn("queue paused: claiming nothing until fleetd resume", "event", "queue.paused")
	} else {
		p.log.Info("queue resumed", "event", "queue.resumed")
	}
}

// idleWorkers counts the workers waiting for a key, for the lister's hints.
type idleWorkers struct {
	mu   sync.Mutex
	n    int
	wake chan struct{} // capacity 1: a worker became idle since the last wait
}

func newIdleWorkers() idleWorkers { return idleWorkers{wake: make(chan struct{}, 1)} }

func (w *idleWorkers) add(d int) {
	w.mu.Lock()
	w.n += d
	w.mu.Unlock()
	if d > 0 {
		select {
		case w.wake <- struct{}{}:
		default:
		}
	}
}

// wait blocks until a worker is idle (true) or ctx ends (false).
func (w *idleWorkers) wait(ctx context.Context) bool {
	for {
		w.mu.Lock()
		n := w.n
		w.mu.Unlock()
		if n > 0 {
			return true
		}
		select {
		case <-w.wake:
		case <-ctx.Done():
			return false
		}
	}
}
