package ops

import (
	"fmt"
	"time"
)

// health is what /healthz and /readyz judge, read at one instant.
type health struct {
	now          time.Time
	draining     bool
	lastPoll     time.Time // last successful listing of pending/ (zero: never)
	lastProgress time.Time // last cell start or end, or S3 attempt counted by Progress
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
func livenessWindow(pollInterval, leaseTTL, s3Timeout time.Duration) time.Duration {
	return max(3*pollInterval, leaseTTL, 30*time.Second) + 2*s3Timeout
}

// health reads the agent's state now.
func (s *server) health() health {
	h := health{
		now:          time.Now(),
		draining:     s.cfg.Draining(),
		lastPoll:     s.cfg.Agent.LastPoll(),
		lastProgress: time.Unix(0, s.cfg.Progress.last.Load()),
		running:      s.cfg.Agent.Cells(),
		concurrency:  s.cfg.Concurrency,
		pollInterval: s.cfg.PollInterval,
		window:       livenessWindow(s.cfg.PollInterval, s.cfg.LeaseTTL, s.cfg.S3Timeout),
	}
	if n := s.cfg.Progress.started.Load(); n != 0 {
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

func formatTime(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return t.UTC().Format(time.RFC3339Nano)
}
