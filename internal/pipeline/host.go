package pipeline

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/cellos/fleetd/internal/metrics"
)

// maxHostBackoff bounds the wait between tries of a host that cannot start
// the supervisor.
const maxHostBackoff = time.Minute

// host tracks whether this host can start the supervisor. A start that fails
// (binary gone or not executable, temp dir full, fork refused) is the host's
// fault, not the spec's: filing every claimed spec under failed/ would let one
// broken host drain a whole fleet's queue. So the node stops claiming and,
// after a backoff that doubles from base up to maxHostBackoff, lets a single
// claim through as a probe; the first start that succeeds ends it.
type host struct {
	base time.Duration
	log  *slog.Logger
	m    *metrics.Metrics

	mu      sync.Mutex
	broken  error // the last start failure; nil while the host is fine
	since   time.Time
	backoff time.Duration
	retryAt time.Time
	probe   uint64 // ticket of the claim let through as a probe; 0: none
	tickets uint64
	changed chan struct{} // closed and replaced on every change
}

func newHost(base time.Duration, log *slog.Logger, m *metrics.Metrics) *host {
	return &host{base: base, log: log, m: m, changed: make(chan struct{})}
}

// admit blocks while the host is broken and it is not yet time for a probe,
// or another probe is under way. It returns a ticket, non-zero for the probe,
// to hand to done, startFailed or started; ok is false once ctx ends.
func (h *host) admit(ctx context.Context) (ticket uint64, ok bool) {
	for {
		h.mu.Lock()
		if h.broken == nil {
			h.mu.Unlock()
			return 0, true
		}
		wait := time.Until(h.retryAt)
		if h.probe == 0 && wait <= 0 {
			h.tickets++
			h.probe = h.tickets
			ticket := h.probe
			h.mu.Unlock()
			return ticket, true
		}
		changed, probing := h.changed, h.probe != 0
		h.mu.Unlock()
		if probing {
			wait = maxHostBackoff // the probe's end is a change
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return 0, false
		case <-changed:
		case <-t.C:
		}
		t.Stop()
	}
}

// done ends a claim that got no start result (claimed elsewhere, rejected,
// gated): if it was the probe, the next waiter may probe.
func (h *host) done(ticket uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if ticket != 0 && h.probe == ticket {
		h.probe = 0
		h.signal()
	}
}

// startFailed records a supervisor that could not be started.
func (h *host) startFailed(ticket uint64, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.m.SupervisorStartFailed()
	switch {
	case h.broken == nil:
		h.broken, h.since, h.backoff = err, time.Now(), h.base
		h.retryAt = time.Now().Add(h.backoff)
		h.m.SetHostBroken(true)
		h.log.Error("supervisor cannot be started on this host: claiming stopped, specs go back to pending/ unharmed; retrying with backoff", "event", "host.broken",
			"err", err, "retry_in_ms", h.backoff.Milliseconds())
	case ticket != 0 && ticket == h.probe:
		h.broken, h.backoff = err, min(2*h.backoff, max(maxHostBackoff, h.base))
		h.retryAt = time.Now().Add(h.backoff)
		h.log.Warn("supervisor still cannot be started; retrying later", "event", "host.still_broken", "err", err, "retry_in_ms", h.backoff.Milliseconds())
	default:
		h.broken = err // a claim let through before the host broke
	}
	if ticket != 0 && ticket == h.probe {
		h.probe = 0
	}
	h.signal()
}

// started records a supervisor that started: the host works.
func (h *host) started() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.broken == nil {
		return
	}
	h.log.Info("supervisor starts again: claiming resumed", "event", "host.recovered", "broken_for_ms", time.Since(h.since).Milliseconds())
	h.broken, h.probe, h.backoff = nil, 0, 0
	h.m.SetHostBroken(false)
	h.signal()
}

// err returns the start failure the host is held back by, nil when it is fine.
func (h *host) err() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.broken
}

func (h *host) signal() {
	close(h.changed)
	h.changed = make(chan struct{})
}
