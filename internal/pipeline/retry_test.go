package pipeline

import (
	"context"
	"testing"
	"time"

	"github.com/cellos/fleetd/internal/exec"
	"github.com/cellos/fleetd/internal/protocol"
	"github.com/cellos/fleetd/internal/store"
)

func TestFailedRunIsRetriedWhileRetriesAreLeft(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		meta      map[string]string // the pending spec's
		retries   int               // the agent's default
		res       exec.Result
		wantRetry bool
	}{
		{"no retries: failed", nil, 0, exec.Result{ExitCode: 1}, false},
		{"agent default", nil, 2, exec.Result{ExitCode: 1}, true},
		{"signal", nil, 2, exec.Result{ExitCode: -1, Signal: "SIGKILL"}, true},
		{"success is never retried", nil, 2, exec.Result{}, false},
		{"the spec's own limit wins over the agent's", map[string]string{"fleetd-retries": "0"}, 5, exec.Result{ExitCode: 1}, false},
		{"the spec's own limit, agent none", map[string]string{"fleetd-retries": "1"}, 0, exec.Result{ExitCode: 1}, true},
		{"retries used up", map[string]string{"fleetd-retries": "2", "fleetd-retried": "2"}, 0, exec.Result{ExitCode: 1}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p, b := setup(t, Config{Retries: tt.retries, RetryBackoff: time.Second})
			if _, err := b.store.Put(context.Background(), key, []byte(specBody), store.PutOptions{Metadata: tt.meta}); err != nil {
				t.Fatal(err)
			}
			b.runner.run = func(_ context.Context, _, _ string, started func(exec.Cell)) exec.Result {
				started(&fakeCell{})
				return tt.res
			}
			before := time.Now()
			p.process(item)
			retried := len(b.claim.retried) == 1
			if retried != tt.wantRetry || retried == (len(b.claim.finished) == 1) {
				t.Fatalf("retried %v, finished %+v; want retried %v and otherwise one result", b.claim.retried, b.claim.finished, tt.wantRetry)
			}
			if retried {
				if nb := b.claim.retried[0]; nb.Before(before) || nb.After(time.Now().Add(time.Second)) {
					t.Errorf("not before %v, want within the first backoff (1 s) of the failure at %v", nb, before)
				}
			}
		})
	}
}

func TestRetryBackoffDoublesWithFullJitterUpToAnHour(t *testing.T) {
	t.Parallel()
	var top bool // jitter at its top (n-1) or its bottom (0)
	p, _ := setup(t, Config{RetryBackoff: 10 * time.Second, Jitter: func(n int64) int64 {
		if top {
			return n - 1
		}
		return 0
	}})
	for _, tt := range []struct {
		done int
		max  time.Duration
	}{{0, 10 * time.Second}, {1, 20 * time.Second}, {2, 40 * time.Second}, {8, 2560 * time.Second}, {9, time.Hour}, {60, time.Hour}} {
		top = true
		if got := p.backoff(tt.done); got != tt.max {
			t.Errorf("backoff after %d retries, jitter at its top = %v, want %v", tt.done, got, tt.max)
		}
		top = false
		if got := p.backoff(tt.done); got != 0 {
			t.Errorf("backoff after %d retries, jitter at its bottom = %v, want 0 (full jitter)", tt.done, got)
		}
	}
}

func TestRetryStateTravelsInMetadata(t *testing.T) {
	t.Parallel()
	r := protocol.ParseRetry(map[string]string{"fleetd-retries": "3", "fleetd-retried": "2", "fleetd-reasons": "supervisor exit 1 | timeout"})
	if r.Limit != 3 || r.Done != 2 || len(r.Reasons) != 2 || r.Reasons[1] != "timeout" || r.Left(0) != 1 {
		t.Errorf("parsed %+v (left %d), want limit 3, 2 done, 2 reasons, 1 left", r, r.Left(0))
	}
	if r := protocol.ParseRetry(map[string]string{"fleetd-retries": "-2"}); r.Limit != -1 || r.Left(4) != 4 {
		t.Errorf("a negative limit parsed as %+v, want absent (the agent's 4 applies)", r)
	}
}
