package protocol

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/cellos/fleetd/internal/exec"
	"github.com/cellos/fleetd/internal/store"
)

// The output is one PUT under the lease, before the result, with the run's
// metadata; a result implies its output.
func TestFinishWritesTheOutputBeforeTheResult(t *testing.T) {
	p, s := setup(t)
	spec := pending(t, p, s, "a")
	c, err := p.Claim(context.Background(), nil, spec)
	if err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	s.log = nil
	s.mu.Unlock()
	rec := Record{Outcome: Failed, Reason: "supervisor exit 3", Started: time.Now(), Finished: time.Now(),
		Result: &exec.Result{ExitCode: 3}, Output: &Output{Body: []byte("tail\n"), Truncated: true}}
	if err := c.Finish(context.Background(), nil, rec); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	var puts []string
	for _, l := range s.log {
		if l == "PUT fleet/output/a.txt" || l == "PUT fleet/failed/a.json" {
			puts = append(puts, l)
		}
	}
	s.mu.Unlock()
	if want := []string{"PUT fleet/output/a.txt", "PUT fleet/failed/a.json"}; !slices.Equal(puts, want) {
		t.Errorf("writes %v, want %v", puts, want)
	}
	o, ok := s.object("fleet/output/a.txt")
	info := ParseOutput(o.Metadata)
	if !ok || string(o.Body) != "tail\n" || info.Node != "n1" || info.Attempt != 1 || info.Exit != "3" || !info.Truncated {
		t.Errorf("output %q %+v", o.Body, info)
	}
	res, _ := s.object("fleet/failed/a.json")
	if !info.Matches(res.Metadata) {
		t.Error("the output does not match the result it was written with")
	}
	if other := (OutputInfo{}); other.Matches(res.Metadata) {
		t.Error("an output without a token matches")
	}
}

// Prune removes the output with its result; a cancel filing removes an
// output left from an earlier run, so its record is not read with it.
func TestPruneAndCancelRemoveTheOutput(t *testing.T) {
	p, s := setup(t)
	body := []byte(`{"spec":{"id":"a"}}`)
	key := p.cfg.Layout.Key(store.Completed, "a")
	s.PutAt(key, body, nil, time.Now().Add(-2*time.Hour))
	s.PutAt("fleet/output/a.txt", []byte("out"), nil, time.Now().Add(-2*time.Hour))
	if err := p.Prune(context.Background(), key, etagOf(t, s, key), time.Hour); err != nil {
		t.Fatal(err)
	}
	if s.has("fleet/output/a.txt") || s.has(key) {
		t.Errorf("after prune: %v", s.keys())
	}

	s.PutAt("fleet/output/b.txt", []byte("an earlier run's"), nil, time.Now())
	pending(t, p, s, "b")
	if res, err := p.Cancel(context.Background(), "b", "alice"); err != nil || !res.Filed {
		t.Fatalf("Cancel = %+v, %v", res, err)
	}
	if got := s.keys(); !slices.Equal(got, []string{"fleet/failed/b.json"}) {
		t.Errorf("after cancel: %v, want only failed/b.json", got)
	}
}

func etagOf(t *testing.T, s *faultStore, key string) string {
	t.Helper()
	o, ok := s.object(key)
	if !ok {
		t.Fatalf("%s missing", key)
	}
	return o.ETag
}
