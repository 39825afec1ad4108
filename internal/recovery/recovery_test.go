package recovery

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/cellos/fleetd/internal/drain"
)

// fakeProtocol calls recoverIfDue for each scan offered.
type fakeProtocol struct {
	recoverIfDue func(ctx context.Context, quit <-chan struct{}) (bool, error)
}

func (f *fakeProtocol) RecoverIfDue(ctx context.Context, quit <-chan struct{}) (bool, error) {
	return f.recoverIfDue(ctx, quit)
}

// syncBuffer is a log destination the rescuer's goroutine and the test share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

const ttl = 10 * time.Millisecond

func TestRunOffersScansUntilContextEnds(t *testing.T) {
	t.Parallel()
	scans := make(chan struct{}, 10)
	var logs syncBuffer
	p := &fakeProtocol{recoverIfDue: func(context.Context, <-chan struct{}) (bool, error) {
		scans <- struct{}{}
		return false, errors.New("store unreachable")
	}}
	r := New(p, drain.New(context.Background(), time.Second), ttl, slog.New(slog.NewJSONHandler(&logs, nil)), nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.Run(ctx)
	}()
	for i := range 3 { // a failed scan is retried at the next turn
		select {
		case <-scans:
		case <-time.After(10 * time.Second):
			t.Fatalf("scan %d not offered within 10s at a ttl of %v", i+1, ttl)
		}
	}
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return within 10s of its context ending")
	}
	var rec struct {
		Level string `json:"level"`
		Err   string `json:"err"`
	}
	if err := json.Unmarshal([]byte(firstLine(logs.String())), &rec); err != nil || rec.Level != "WARN" || rec.Err != "store unreachable" {
		t.Errorf("first log line %q (%v), want a warning with err=store unreachable", firstLine(logs.String()), err)
	}
}

func TestNoScanOnceTheDrainBegins(t *testing.T) {
	t.Parallel()
	p := &fakeProtocol{recoverIfDue: func(context.Context, <-chan struct{}) (bool, error) {
		t.Error("scan offered after the drain began")
		return false, nil
	}}
	d := drain.New(context.Background(), time.Second)
	d.CloseIntake()
	done := make(chan struct{})
	go func() {
		defer close(done)
		// Not the intake: Run must stop at Begin's refusal alone.
		New(p, d, ttl, slog.New(slog.DiscardHandler), nil).Run(context.Background())
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return within 10s with the drain begun")
	}
}

func TestScanHoldsTheDrain(t *testing.T) {
	t.Parallel()
	d := drain.New(context.Background(), time.Second)
	scanning, finish := make(chan struct{}), make(chan struct{})
	p := &fakeProtocol{recoverIfDue: func(ctx context.Context, quit <-chan struct{}) (bool, error) {
		close(scanning)
		<-quit // the drain's intake closing is the scan's quit
		<-finish
		return true, nil
	}}
	go New(p, d, ttl, slog.New(slog.DiscardHandler), nil).Run(d.Intake())
	<-scanning
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		d.Drain(context.Background())
	}()
	select {
	case <-drained:
		t.Fatal("drain completed while a scan was running")
	case <-time.After(50 * time.Millisecond):
		// Proving a negative: give the drain time to misbehave.
	}
	close(finish)
	<-drained
}

func firstLine(s string) string {
	for i, c := range s {
		if c == '\n' {
			return s[:i]
		}
	}
	return s
}
