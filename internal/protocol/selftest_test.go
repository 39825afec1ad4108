package protocol

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/cellos/fleetd/internal/s3mem"
	"github.com/cellos/fleetd/internal/store"
)

// racyStore checks If-None-Match, then writes without it: a store whose
// conditions are checked but not atomic. Every create-only PUT of a key
// waits until n of them have checked, so they all see the key absent.
type racyStore struct {
	*s3mem.Store
	n     int
	mu    sync.Mutex
	seen  int
	ready chan struct{}
}

func (s *racyStore) Put(ctx context.Context, key string, body []byte, opt store.PutOptions) (string, error) {
	if !opt.IfAbsent || !strings.HasSuffix(key, ".race") {
		return s.Store.Put(ctx, key, body, opt)
	}
	if _, err := s.Head(ctx, key); err == nil {
		return "", store.ErrPrecondition
	}
	s.mu.Lock()
	if s.seen++; s.seen == s.n {
		close(s.ready)
	}
	s.mu.Unlock()
	<-s.ready
	opt.IfAbsent = false
	return s.Store.Put(ctx, key, body, opt)
}

// The self-test picks the delete mode the store can serve, and refuses a
// store that can serve neither, naming what is missing.
func TestSelfTestPicksTheDeleteMode(t *testing.T) {
	for _, tt := range []struct {
		name   string
		quirks s3mem.Quirks
		racy   bool
		mode   store.DeleteMode
		unfit  string
	}{
		{"DELETE honours If-Match", s3mem.Quirks{}, false, store.IfMatchDeletes, ""},
		{"versioned bucket honours If-Match", s3mem.Quirks{Versioning: true}, false, store.IfMatchDeletes, ""},
		{"DELETE ignores If-Match, versioned bucket", s3mem.Quirks{IgnoreDeleteIfMatch: true, Versioning: true}, false, store.VersionedDeletes, ""},
		{"DELETE ignores If-Match, plain bucket", s3mem.Quirks{IgnoreDeleteIfMatch: true}, false, "", "enable versioning on the bucket"},
		{"create-only PUT not atomic", s3mem.Quirks{}, true, "", "not atomically"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			mem := s3mem.New(tt.quirks)
			var storage Store = mem
			if tt.racy {
				storage = &racyStore{Store: mem, n: racers, ready: make(chan struct{})}
			}
			p := New(Config{Layout: store.NewLayout("fleet", ""), Node: "n1", TTL: MinTTL, MaxAttempts: 3,
				Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, storage)
			mode, err := p.SelfTest(context.Background())
			switch {
			case tt.unfit != "":
				if !errors.Is(err, ErrUnfit) || !strings.Contains(err.Error(), tt.unfit) {
					t.Fatalf("SelfTest = %q, %v; want ErrUnfit naming %q", mode, err, tt.unfit)
				}
			case err != nil || mode != tt.mode:
				t.Fatalf("SelfTest = %q, %v; want %q", mode, err, tt.mode)
			}
			for _, o := range mem.Snapshot("") {
				t.Errorf("left %s", o.Key)
			}
		})
	}
}
