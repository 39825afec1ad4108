package pipeline

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/cellos/fleetd/internal/metrics"
)

func admitted(t *testing.T, h *host) <-chan uint64 {
	t.Helper()
	ch := make(chan uint64, 1)
	go func() {
		ticket, ok := h.admit(context.Background())
		if ok {
			ch <- ticket
		}
	}()
	return ch
}

func TestHostProbesOneAtATimeWithBackoff(t *testing.T) {
	t.Parallel()
	h := newHost(20*time.Millisecond, slog.New(slog.NewTextHandler(io.Discard, nil)), metrics.New(1, "", ""))
	if ticket, ok := h.admit(context.Background()); !ok || ticket != 0 {
		t.Fatalf("healthy host: admit = %d, %v; want 0 (no probe), true", ticket, ok)
	}
	broke := errors.New("permission denied")
	h.startFailed(0, broke)
	if !errors.Is(h.err(), broke) {
		t.Fatalf("err = %v after a failed start", h.err())
	}
	start := time.Now()
	probe := <-admitted(t, h)
	if probe == 0 || time.Since(start) < 15*time.Millisecond {
		t.Fatalf("probe ticket %d after %v, want a probe after the backoff", probe, time.Since(start))
	}
	// One probe at a time: the next waiter gets in only when it ends.
	second := admitted(t, h)
	select {
	case tk := <-second:
		t.Fatalf("second claim admitted (ticket %d) while a probe is under way", tk)
	case <-time.After(100 * time.Millisecond): // proving a negative
	}
	h.done(probe) // the probe's claim went elsewhere
	probe2 := <-second
	if probe2 == 0 || probe2 == probe {
		t.Fatalf("next probe ticket %d", probe2)
	}
	h.startFailed(probe2, broke)
	if h.backoff != 40*time.Millisecond {
		t.Errorf("backoff %v after a failed probe, want doubled to 40ms", h.backoff)
	}
	h.done(probe2) // a no-op after startFailed
	for range 20 {
		h.mu.Lock()
		h.probe = 1
		h.mu.Unlock()
		h.startFailed(1, broke)
	}
	if h.backoff != maxHostBackoff {
		t.Errorf("backoff %v after many failures, want capped at %v", h.backoff, maxHostBackoff)
	}
	waiter := admitted(t, h) // waits out a minute unless the host heals
	h.started()
	if h.err() != nil {
		t.Errorf("err = %v after a start", h.err())
	}
	if tk := <-waiter; tk != 0 {
		t.Errorf("healed host admitted with probe ticket %d, want 0", tk)
	}
}

func TestHostAdmitEndsWithContext(t *testing.T) {
	t.Parallel()
	h := newHost(time.Hour, slog.New(slog.NewTextHandler(io.Discard, nil)), metrics.New(1, "", ""))
	h.startFailed(0, errors.New("no"))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, ok := h.admit(ctx); ok {
		t.Error("admit returned ok with its context ended")
	}
}
