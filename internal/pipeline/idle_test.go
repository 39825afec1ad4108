package pipeline

import (
	"context"
	"testing"
	"time"
)

// wait returns at once while a worker is idle, blocks while none is, and
// wakes when one becomes idle or the context ends.
func TestIdleWorkersWait(t *testing.T) {
	t.Parallel()
	w := newIdleWorkers()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	woke := make(chan bool)
	go func() { woke <- w.wait(ctx) }()
	select {
	case <-woke:
		t.Fatal("wait returned with no worker idle")
	case <-time.After(100 * time.Millisecond):
	}
	w.add(1)
	if !<-woke {
		t.Fatal("wait = false with a worker idle")
	}
	if !w.wait(ctx) {
		t.Fatal("wait = false with a worker still idle")
	}
	w.add(-1)
	go func() { woke <- w.wait(ctx) }()
	cancel()
	if <-woke {
		t.Fatal("wait = true after the context ended with no worker idle")
	}
}
