package drain

import (
	"context"
	"testing"
	"time"
)

func TestDrainWaitsForWork(t *testing.T) {
	t.Parallel()
	d := New(context.Background(), time.Second)
	if !d.Begin() {
		t.Fatal("Begin before drain = false")
	}
	release := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		<-release
		close(finished)
		d.End()
	}()
	drained := make(chan bool)
	go func() { drained <- d.Drain(context.Background()) }()

	<-d.Intake().Done()
	if d.Begin() {
		t.Fatal("Begin after drain began = true")
	}
	select {
	case <-drained:
		t.Fatal("Drain returned with work in flight")
	default:
	}
	close(release)
	if stopped := <-drained; stopped {
		t.Error("Drain stopped work though no deadline passed")
	}
	<-finished
	if d.Work().Err() != nil {
		t.Error("Work cancelled without a deadline")
	}
}

func TestDrainDeadlineStopsWork(t *testing.T) {
	t.Parallel()
	d := New(context.Background(), time.Second)
	d.Begin()
	go func() {
		<-d.Work().Done() // the work ends only when told to stop
		d.End()
	}()
	deadline, cancel := context.WithCancel(context.Background())
	cancel()
	if stopped := d.Drain(deadline); !stopped {
		t.Error("Drain past its deadline reported stopped = false")
	}
}
