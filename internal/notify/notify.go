// Package notify turns a store's bucket notifications, published to NATS,
// into hints: keys that may just have become pending. A hint is never
// trusted for content, bucket or key: the worker that takes one reads, gates
// and claims the key as it would a listed one.
//
// The store publishes core NATS messages (at most once). A JetStream stream
// on the subject holds them, and one durable pull consumer per lane and pool
// hands each to one agent: an agent asks for the next only while a worker of
// its is idle, so no busy agent sits on a hint another could run now, and an
// event that arrives while every agent is busy waits in the stream, not in an
// agent.
package notify

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Config configures a Source.
type Config struct {
	URL     string // nats:// or tls:// URL(s), comma-separated; may hold credentials
	Subject string // where the store publishes the bucket's events
	Bucket  string // events of other buckets are dropped
	Dir     string // the lane's pending/ directory: events elsewhere are ignored
	URLKeys bool   // keys arrive URL-encoded (AWS, MinIO), not raw (versitygw)
	// Group names the agents that share the events, each event going to one
	// of them: fleetd passes its lane and pool, since an agent of another
	// pool would only skip the spec.
	Group string
	// Options carry TLS and credentials (nats.UserCredentials, nats.RootCAs,
	// nats.ClientCert).
	Options []nats.Option
	Logger  *slog.Logger
	// Counted, if set, is told the result of each message read (Result*).
	Counted func(result string)
	// Connected, if set, is told each change of whether hints flow.
	Connected func(up bool)
}

// Timing of the pull loop. A pull waits at the server for the next event;
// the heartbeat tells a dead connection from a quiet subject.
const (
	pullWait      = 20 * time.Second
	pullHeartbeat = 5 * time.Second
	requestWait   = 5 * time.Second // one JetStream API request
	maxBackoff    = 30 * time.Second
)

// Source hands out hints from a NATS JetStream consumer. Next is called by one
// goroutine at a time.
type Source struct {
	cfg      Config
	filter   filter
	stream   string
	consumer string
	nc       *nats.Conn
	js       jetstream.JetStream
	log      *slog.Logger

	mu      sync.Mutex
	state   int // 0 not yet known, then up or down
	changed chan struct{}
	cons    jetstream.Consumer // nil until set up, and after a loss
}

const (
	stateUp = iota + 1
	stateDown
)

// Dial connects to NATS and returns a Source. It does not wait for the
// server: with NATS down, the Source keeps trying in the background and
// reports itself down meanwhile. The caller must Close it.
func Dial(cfg Config) (*Source, error) {
	s := &Source{
		cfg:      cfg,
		filter:   filter{bucket: cfg.Bucket, dir: cfg.Dir, urlKeys: cfg.URLKeys},
		stream:   "FLEETD_EVENTS_" + digest(cfg.Subject),
		consumer: "fleetd_" + digest(cfg.Bucket, cfg.Group),
		log:      cfg.Logger.With("notify_url", Redact(cfg.URL), "notify_subject", cfg.Subject),
		changed:  make(chan struct{}),
	}
	opts := append([]nats.Option{
		nats.Name("fleetd"),
		nats.MaxReconnects(-1),
		nats.RetryOnFailedConnect(true),
		nats.ReconnectWait(time.Second),
		nats.ReconnectJitter(500*time.Millisecond, time.Second),
		// The stream may be gone with the server (it lives in memory): set
		// up again after every disconnection.
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err == nil {
				err = errors.New("disconnected")
			}
			s.lose(nil, err)
		}),
	}, cfg.Options...)
	nc, err := nats.Connect(cfg.URL, opts...)
	if err != nil {
		return nil, fmt.Errorf("notify: connect to %s: %w", Redact(cfg.URL), err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("notify: jetstream on %s: %w", Redact(cfg.URL), err)
	}
	s.nc, s.js = nc, js
	return s, nil
}

// Close disconnects. A Next in progress returns.
func (s *Source) Close() { s.nc.Close() }

// State reports whether hints flow now, and a channel closed at the next
// change.
func (s *Source) State() (up bool, changed <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state == stateUp, s.changed
}

// Next blocks until an event hints at a key under the lane's pending/, or ctx
// ends (its only error). done must be called with whether a worker took the
// key: one not taken goes back to the stream, for another agent. Other
// messages are counted, acknowledged and skipped. While NATS is unreachable
// it retries with backoff, reporting the source down.
func (s *Source) Next(ctx context.Context) (key string, done func(taken bool), err error) {
	for {
		c, err := s.setUp(ctx)
		if err != nil {
			return "", nil, err
		}
		pull, cancel := context.WithTimeout(ctx, pullWait)
		msg, err := c.Next(jetstream.FetchContext(pull), jetstream.FetchHeartbeat(pullHeartbeat))
		cancel()
		switch {
		case ctx.Err() != nil:
			return "", nil, ctx.Err()
		case errors.Is(err, nats.ErrTimeout), errors.Is(err, context.DeadlineExceeded):
			continue // a quiet subject
		case err != nil:
			s.lose(c, err)
			continue
		}
		key, result := s.filter.read(msg.Data())
		if s.cfg.Counted != nil {
			s.cfg.Counted(result)
		}
		if result != ResultHint {
			_ = msg.Ack() // no other agent of the group needs it either
			continue
		}
		return key, func(taken bool) {
			if taken {
				_ = msg.Ack()
			} else {
				_ = msg.Nak()
			}
		}, nil
	}
}

// setUp returns the consumer, creating the stream and the consumer when
// there is none (first use, after a loss), with backoff until it can.
func (s *Source) setUp(ctx context.Context) (jetstream.Consumer, error) {
	s.mu.Lock()
	c := s.cons
	s.mu.Unlock()
	if c != nil {
		return c, nil
	}
	for wait := 500 * time.Millisecond; ; wait = min(2*wait, maxBackoff) {
		c, err := s.create(ctx)
		if err == nil {
			s.mu.Lock()
			s.cons = c
			s.mu.Unlock()
			s.set(stateUp, nil)
			return c, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		s.set(stateDown, err)
		// Jittered, so a fleet does not come back in step.
		wait := wait/2 + rand.N(wait/2+1)
		s.log.Debug("notifications: set-up failed; retrying", "event", "notify.retry", "err", err, "retry_in_ms", wait.Milliseconds())
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(wait):
		}
	}
}

// create makes (or finds) the stream on the subject and the group's consumer.
// Both calls are idempotent: every agent makes them with the same settings.
func (s *Source) create(ctx context.Context) (jetstream.Consumer, error) {
	ctx, cancel := context.WithTimeout(ctx, requestWait)
	defer cancel()
	stream, err := s.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:     s.stream,
		Subjects: []string{s.cfg.Subject},
		// Events are hints the poll backs up: memory is enough, and an hour
		// of them bounds what an idle group finds when it comes back.
		Storage:   jetstream.MemoryStorage,
		Retention: jetstream.LimitsPolicy,
		MaxAge:    time.Hour,
		MaxBytes:  64 << 20,
		Discard:   jetstream.DiscardOld,
	})
	if err != nil {
		return nil, fmt.Errorf("notify: stream %s on subject %s: %w", s.stream, s.cfg.Subject, err)
	}
	c, err := stream.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable:       s.consumer,
		DeliverPolicy: jetstream.DeliverNewPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		// A hint handed out but never answered (its agent died) goes to
		// another agent after AckWait; one bounced from agent to agent
		// stops after MaxDeliver, and the poll finds the key.
		AckWait:           5 * time.Second,
		MaxDeliver:        10,
		InactiveThreshold: 24 * time.Hour, // a lane nobody serves any more
	})
	if err != nil {
		return nil, fmt.Errorf("notify: consumer %s of stream %s: %w", s.consumer, s.stream, err)
	}
	return c, nil
}

// lose drops consumer c (nil: whichever is current) after err: the next
// Next sets it up again.
func (s *Source) lose(c jetstream.Consumer, err error) {
	s.mu.Lock()
	if c == nil || s.cons == c {
		s.cons = nil
	}
	s.mu.Unlock()
	s.set(stateDown, err)
}

// set records the state and says so once per change. It logs under the lock,
// so no one acts on the new state (State) before its line is written: a log
// reader sees notify.connected before the listing that follows it.
func (s *Source) set(state int, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	was := s.state
	if was == state {
		return
	}
	s.state = state
	if state == stateUp {
		s.log.Info("notifications flowing: pending/ is polled as a safety net", "event", "notify.connected",
			"stream", s.stream, "consumer", s.consumer)
	} else {
		s.log.Warn("notifications lost: polling pending/ at the poll interval and reconnecting", "event", "notify.lost", "err", err)
	}
	if s.cfg.Connected != nil {
		s.cfg.Connected(state == stateUp)
	}
	if (was == stateUp) != (state == stateUp) {
		close(s.changed)
		s.changed = make(chan struct{})
	}
}

// digest names a stream or consumer after parts that may hold characters
// NATS names may not (., *, >, /).
func digest(parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// Redact returns the NATS URL(s) without user, password or token.
func Redact(urls string) string {
	var out []byte
	for i, raw := range strings.Split(urls, ",") {
		if i > 0 {
			out = append(out, ',')
		}
		u, err := url.Parse(raw)
		if err != nil {
			out = append(out, "<unparsable URL>"...)
			continue
		}
		if u.User != nil {
			u.User = url.User("REDACTED")
		}
		out = append(out, u.String()...)
	}
	return string(out)
}
