package main

import (
	"context"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/cellos/fleetd/internal/exec"
	"github.com/cellos/fleetd/internal/pipeline"
)

// progress records the signs that fleetd's loops are turning, for /healthz
// and /readyz. main feeds it from the two places it wires: the supervisor
// runner (a cell started or ended) and the S3 request observer.
type progress struct {
	last    atomic.Int64 // unix nanos of the last sign of progress
	started atomic.Int64 // unix nanos of the last cell start
	running atomic.Int64 // cells running now
}

func newProgress(now time.Time) *progress {
	p := &progress{}
	p.last.Store(now.UnixNano()) // the window starts with the process
	return p
}

// Runner wraps r so that each cell's start and end count as progress.
func (p *progress) Runner(r pipeline.Runner) pipeline.Runner { return progressRunner{r, p} }

type progressRunner struct {
	pipeline.Runner
	p *progress
}

func (r progressRunner) Run(ctx context.Context, specPath, specID string, started func()) exec.Result {
	var began atomic.Bool
	res := r.Runner.Run(ctx, specPath, specID, func() {
		now := time.Now().UnixNano()
		r.p.started.Store(now)
		r.p.last.Store(now)
		r.p.running.Add(1)
		began.Store(true)
		if started != nil {
			started()
		}
	})
	if began.Load() {
		r.p.running.Add(-1)
	}
	r.p.last.Store(time.Now().UnixNano())
	return res
}

// S3Attempt is told of every S3 request attempt (status 0: no answer). A
// failed attempt counts as progress: it shows a loop trying, and an S3 outage
// is not something a restart fixes (it would only add a crash back-off to the
// outage). A successful one counts only while a cell runs, when it stands for
// the lease renewals (every ttl/3) of a cell that may run for hours; an idle
// agent shows progress by listing pending/.
func (p *progress) S3Attempt(status int) {
	failed := status == 0 || status == http.StatusTooManyRequests || status >= 500
	if failed || p.running.Load() > 0 {
		p.last.Store(time.Now().UnixNano())
	}
}

// health is what /healthz and /readyz judge, read at one instant.
type health struct {
	now          time.Time
	draining     bool
	lastPoll     time.Time // last successful listing of pending/ (zero: never)
	lastProgress time.Time // last cell start or end, or S3 attempt counted by progress
	lastStart    time.Time // last cell start (zero: never)
	running      int       // cells running now
	concurrency  int
	pollInterval time.Duration
	window       time.Duration // see livenessWindow
}

// livenessWindow is how long a healthy agent can go without a sign of
// progress: an idle one lists every poll interval, a busy one renews each
// lease every ttl/3, the store self-test retries at least every 30 s, and any
// one S3 attempt ends within the S3 timeout (twice, for the slowest listing
// page and its retry).
func livenessWindow(cfg Config) time.Duration {
	return max(3*cfg.PollInterval, cfg.LeaseTTL, 30*time.Second) + 2*cfg.S3Timeout
}

func (p *progress) health(cfg Config, pl *pipeline.Pipeline, draining bool) health {
	h := health{
		now:          time.Now(),
		draining:     draining,
		lastPoll:     pl.LastPoll(),
		lastProgress: time.Unix(0, p.last.Load()),
		running:      int(p.running.Load()),
		concurrency:  cfg.Concurrency,
		pollInterval: cfg.PollInterval,
		window:       livenessWindow(cfg),
	}
	if n := p.started.Load(); n != 0 {
		h.lastStart = time.Unix(0, n)
	}
	return h
}

// live reports whether the agent is wedged: not draining, and for the whole
// liveness window it has not listed pending/, not started or ended a cell,
// not tried S3 and failed, and had no cell running while S3 answered. That
// is, every loop that should be turning has stopped while S3 works (a lister
// or worker pool stuck). A drain is never wedged: its own bound and the
// orchestrator's grace period end it. While cells run the agent is alive as
// long as it talks to S3: restarting would kill those cells.
func (h health) live() error {
	if h.draining {
		return nil
	}
	last := h.lastProgress
	if h.lastPoll.After(last) {
		last = h.lastPoll
	}
	if idle := h.now.Sub(last); idle > h.window {
		return fmt.Errorf("wedged: no listing of pending/, no cell started or ended and no S3 activity for %s (limit %s)",
			idle.Round(time.Second), h.window)
	}
	return nil
}

// ready reports whether the agent takes work: not draining, and it listed
// pending/ within 3 poll intervals, or it is busy. A node with every slot
// running a cell stops listing until one frees (its lister waits holding the
// next key), and one that started a cell within 3 poll intervals has just
// claimed through S3: both are working, not stuck.
func (h health) ready() (string, error) {
	limit := 3 * h.pollInterval
	switch {
	case h.draining:
		return "", fmt.Errorf("draining")
	case !h.lastPoll.IsZero() && h.now.Sub(h.lastPoll) <= limit:
		return fmt.Sprintf("ready (last poll %s)", formatTime(h.lastPoll)), nil
	case h.running >= h.concurrency:
		return fmt.Sprintf("ready (busy: %d of %d slots running cells; last poll %s)", h.running, h.concurrency, formatTime(h.lastPoll)), nil
	case !h.lastStart.IsZero() && h.now.Sub(h.lastStart) <= limit:
		return fmt.Sprintf("ready (busy: a cell started %s; last poll %s)", formatTime(h.lastStart), formatTime(h.lastPoll)), nil
	}
	return "", fmt.Errorf("no successful poll in 3 poll intervals (last: %s)", formatTime(h.lastPoll))
}
