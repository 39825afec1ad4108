package store

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"testing"
	"time"

	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/cellos/fleetd/internal/faultproxy"
)

// A write attempt that the store processes after the store has given up on it
// must be refused. The claim's DELETE pending/ If-Match E0 is held past its
// attempt's deadline; the store's retry deletes; the same bytes are submitted
// again (same ETag); then the held DELETE arrives. Without the expiry it
// deletes the resubmission (issue 18, item 4); with it the store refuses it.
func TestLateWriteIsRefused(t *testing.T) {
	t.Parallel()
	spec := []byte(`{"kind":"ExecutionCell","spec":{"id":"a"}}`)
	for _, tt := range []struct {
		name string
		// write is the store call whose first attempt is held; it must succeed
		// by its retry. after is what happens once it has, before the held
		// attempt arrives.
		method string
		write  func(ctx context.Context, s *Store, etag string) error
		after  func(ctx context.Context, s *Store) error
		// check says whether the state survived the late attempt.
		check func(ctx context.Context, s *Store) error
	}{
		{
			name:   "DELETE If-Match of a resubmission of the same bytes",
			method: "DELETE",
			write:  func(ctx context.Context, s *Store, etag string) error { return s.Delete(ctx, "pending/a.json", etag) },
			after: func(ctx context.Context, s *Store) error {
				_, err := s.Put(ctx, "pending/a.json", spec, PutOptions{IfAbsent: true})
				return err
			},
			check: func(ctx context.Context, s *Store) error {
				_, err := s.Head(ctx, "pending/a.json")
				return err
			},
		},
		{
			name:   "PUT of an object deleted since",
			method: "PUT",
			write: func(ctx context.Context, s *Store, etag string) error {
				_, err := s.Put(ctx, "claimed/a.json", spec, PutOptions{})
				return err
			},
			after: func(ctx context.Context, s *Store) error { return s.Delete(ctx, "claimed/a.json", "") },
			check: func(ctx context.Context, s *Store) error {
				if _, err := s.Head(ctx, "claimed/a.json"); !errors.Is(err, ErrNotFound) {
					return errors.New("claimed/ came back")
				}
				return nil
			},
		},
	} {
		for _, expiry := range []bool{true, false} {
			name := tt.name
			if !expiry {
				name += ", without the expiry"
			}
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				ctx := context.Background()
				s, p, _ := faultyStore(t)
				s.noExpiry = !expiry
				// The first answer tells the store the store's clock.
				etag, err := s.Put(ctx, "pending/a.json", spec, PutOptions{IfAbsent: true})
				if err != nil {
					t.Fatal(err)
				}
				h := p.Add(faultproxy.Rule{Method: tt.method, Key: regexp.MustCompile(`^(pending|claimed)/a\.json$`),
					Action: faultproxy.Hold, Outlive: true, Times: 1})
				start := time.Now()
				if err := tt.write(ctx, s, etag); err != nil {
					t.Fatalf("write whose first attempt was held: %v", err)
				}
				if h.Fired() != 1 || time.Since(start) < s.policy.Timeout {
					t.Fatalf("held %d attempts, write took %v; want the first attempt held to its timeout", h.Fired(), time.Since(start))
				}
				if err := tt.after(ctx, s); err != nil {
					t.Fatal(err)
				}
				h.Release()
				statuses, err := h.Forwarded(ctx, 1)
				if err != nil {
					t.Fatal(err)
				}
				cerr := tt.check(ctx, s)
				if expiry {
					if statuses[0] != http.StatusForbidden || cerr != nil {
						t.Errorf("late attempt answered %d, state: %v; want 403 and the state kept", statuses[0], cerr)
					}
					return
				}
				// Without the expiry the late attempt lands: what the test guards against.
				if statuses[0]/100 != 2 || cerr == nil {
					t.Errorf("without the expiry the late attempt answered %d, state: %v; want it to land and undo the state", statuses[0], cerr)
				}
			})
		}
	}
}

// An attempt refused for expiry did not land: the store learns the store's
// clock from the refusal and retries. Here the store's clock is believed 10 s
// behind, so the first attempt arrives expired.
func TestExpiredAttemptIsRetried(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, p, _ := faultyStore(t)
	if _, err := s.Put(ctx, "k", []byte("x"), PutOptions{}); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	s.clock.observe(now, now, now.Add(-10*time.Second).UTC().Truncate(time.Second))
	presigned := p.Add(faultproxy.Rule{Method: "PUT", Query: "X-Amz-Expires="})
	if _, err := s.Put(ctx, "k", []byte("y"), PutOptions{}); err != nil {
		t.Fatalf("put: %v", err)
	}
	if n := presigned.Fired(); n != 2 {
		t.Errorf("%d presigned attempts, want 2: one refused as expired, one that lands", n)
	}
}

func TestExpiredRefusalIsDefinite(t *testing.T) {
	t.Parallel()
	answer := func(code, msg string) error {
		return &smithyhttp.ResponseError{
			Response: &smithyhttp.Response{Response: &http.Response{StatusCode: http.StatusForbidden}},
			Err:      &smithy.GenericAPIError{Code: code, Message: msg},
		}
	}
	for _, tt := range []struct {
		err     error
		expired bool
	}{
		{answer("AccessDenied", "Request has expired."), true},
		{answer("AccessDenied", "Access Denied"), false},
		{fmt.Errorf("wrapped: %w", ErrExpired), true},
	} {
		mapped := mapError(tt.err)
		if got := errors.Is(mapped, ErrExpired); got != tt.expired {
			t.Errorf("%v: ErrExpired %v, want %v", tt.err, got, tt.expired)
		}
		if tt.expired && (classify(tt.err) != retry || Refused(tt.err) || errors.Is(mapped, ErrAccessDenied)) {
			t.Errorf("%v: classify %v, Refused %v, mapped %v; want retried, not refused, not access denied",
				tt.err, classify(tt.err), Refused(tt.err), mapped)
		}
	}
}

func TestServerClockExpiry(t *testing.T) {
	t.Parallel()
	local := time.Now()
	at := func(d time.Duration) time.Time { return local.Add(d) }
	server := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		name string
		// answers: sent at local offset, received 10 ms later, dated by the
		// store's clock, which reads server + skew + local offset.
		skew     time.Duration
		answers  []time.Duration
		now      time.Duration
		deadline time.Duration
		// late: the store may accept the attempt after deadline (by under a
		// second), because under a second was left to express.
		late bool
	}{
		{name: "no skew", answers: []time.Duration{0}, now: time.Second, deadline: 11 * time.Second},
		{name: "store 10 min behind", skew: -10 * time.Minute, answers: []time.Duration{0, 300 * time.Millisecond, 700 * time.Millisecond},
			now: time.Second, deadline: 3 * time.Second},
		{name: "store 10 min ahead", skew: 10 * time.Minute, answers: []time.Duration{0, 300 * time.Millisecond, 700 * time.Millisecond},
			now: time.Second, deadline: 3 * time.Second},
		{name: "under a second left to express", answers: []time.Duration{0},
			now: 1100 * time.Millisecond, deadline: 1200 * time.Millisecond, late: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var c serverClock
			storeAt := func(d time.Duration) time.Time { return server.Add(tt.skew + d) }
			if _, _, _, known := c.expiry(at(0), at(time.Second)); known {
				t.Fatal("store's clock known before any answer")
			}
			for _, a := range tt.answers {
				// The store stamps its Date 5 ms after the local send, in whole seconds.
				c.observe(at(a), at(a+10*time.Millisecond), storeAt(a+5*time.Millisecond).Truncate(time.Second))
			}
			date, expires, last, known := c.expiry(at(tt.now), at(tt.deadline))
			if !known || expires < 1 {
				t.Fatalf("known %v, expires %d; want known, at least 1", known, expires)
			}
			end := date.Add(time.Duration(expires) * time.Second)
			if date.After(storeAt(tt.now)) || date.Nanosecond() != 0 {
				t.Errorf("X-Amz-Date %v is in the store's future (%v) or not whole seconds", date, storeAt(tt.now))
			}
			// The store refuses it after last by the store's true clock.
			if lastStore := storeAt(last.Sub(local)); end.After(lastStore) {
				t.Errorf("expires at %v by the store's clock, after last (%v)", end, lastStore)
			}
			latest := tt.deadline
			if tt.late {
				// Under a second left: the attempt still gets minFlight on the
				// store's clock at its latest, from a date rounded down from
				// its earliest (bounds a second wide here): up to two seconds
				// past the deadline, inside the fence's margin (max(1 s,
				// ttl/5) plus the 1 s of staleness resolution).
				latest += 2 * time.Second
			}
			// Accepted to no later than the deadline (or two seconds after it
			// when late), and within a second and a round trip of it.
			if last.After(at(latest)) || end.After(storeAt(latest)) || end.Before(storeAt(tt.deadline-time.Second-20*time.Millisecond)) {
				t.Errorf("expires at %v by the store's clock (last %v), want in (%v − 1 s, %v]",
					end, last.Sub(local), storeAt(tt.deadline), storeAt(latest))
			}
		})
	}
}

func TestServerClockStepped(t *testing.T) {
	t.Parallel()
	local := time.Now()
	server := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	var c serverClock
	c.observe(local, local.Add(10*time.Millisecond), server)
	stepped := server.Add(-time.Hour)
	c.observe(local.Add(time.Second), local.Add(time.Second+10*time.Millisecond), stepped.Add(time.Second))
	date, _, _, known := c.expiry(local.Add(2*time.Second), local.Add(10*time.Second))
	if !known || date.After(stepped.Add(2*time.Second)) || date.Before(stepped) {
		t.Errorf("after a step back of an hour the date is %v, want about %v", date, stepped.Add(2*time.Second))
	}
}

// A write with under a second left is signed to expire a second later, so it
// may land after its caller's deadline. The caller's read-back of the key
// waits until the store would refuse it: what the read-back sees is final.
func TestReadBackWaitsForALateWrite(t *testing.T) {
	t.Parallel()
	s, p, _ := faultyStore(t)
	if _, err := s.Put(context.Background(), "other", []byte("x"), PutOptions{}); err != nil {
		t.Fatal(err)
	}
	// Whether the expiry falls after the deadline depends on where in the
	// store's second the write is signed: try keys until one does.
	for i := 0; ; i++ {
		key := fmt.Sprintf("k%d", i)
		h := p.Add(faultproxy.Rule{Method: "PUT", Key: regexp.MustCompile("^" + key + "$"), Action: faultproxy.Hold, Outlive: true, Times: 1})
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		_, err := s.Put(ctx, key, []byte("x"), PutOptions{IfAbsent: true})
		cancel()
		if !errors.Is(err, ErrUnknown) {
			t.Fatalf("put held past its deadline: %v, want ErrUnknown", err)
		}
		until := s.late.until(key)
		if until.IsZero() {
			if i >= 20 {
				t.Fatal("no write signed to expire after its deadline in 20 tries")
			}
			h.Release()
			continue
		}
		if _, err := s.Head(context.Background(), key); !errors.Is(err, ErrNotFound) || time.Now().Before(until) {
			t.Fatalf("read-back: %v, %v before the late write expires; want ErrNotFound, after it", err, time.Until(until))
		}
		h.Release()
		statuses, err := h.Forwarded(context.Background(), 1)
		if err != nil {
			t.Fatal(err)
		}
		if _, herr := s.Head(context.Background(), key); statuses[0] != http.StatusForbidden || !errors.Is(herr, ErrNotFound) {
			t.Errorf("the held write, released after the read-back, answered %d (head: %v); want 403, not there", statuses[0], herr)
		}
		return
	}
}
