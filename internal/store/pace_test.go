package store

import (
	"context"
	"testing"
	"time"
)

// TestPaceBacksOffAndRecovers: SlowDowns double the pause from 50 ms up to
// the limit, successes halve it to none, and a caller with little time left
// pauses at most a quarter of it.
func TestPaceBacksOffAndRecovers(t *testing.T) {
	var p Pace
	if d := p.Pause(context.Background()); d != 0 {
		t.Fatalf("a new pace pauses %v, want none", d)
	}
	for _, want := range []time.Duration{50, 100, 200, 300, 300} {
		p.SlowedDown(300 * time.Millisecond)
		if d := p.Pause(context.Background()); d != want*time.Millisecond {
			t.Fatalf("after a SlowDown: pause %v, want %v", d, want*time.Millisecond)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 400*time.Millisecond)
	defer cancel()
	if d := p.Pause(ctx); d > 100*time.Millisecond {
		t.Errorf("with 400 ms left: pause %v, want at most a quarter", d)
	}
	for range 20 {
		p.Succeeded()
	}
	if d := p.Pause(context.Background()); d != 0 {
		t.Errorf("after 20 successes: pause %v, want none", d)
	}
}
