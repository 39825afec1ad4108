package protocol

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/cellos/fleetd/internal/store"
)

// withSession starts p's session, ended with the test.
func withSession(t *testing.T, p *Protocol) *Session {
	t.Helper()
	s, err := p.StartSession(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(context.Background()) })
	return s
}

// leaseOf reads id's lease as the store holds it.
func leaseOf(t *testing.T, s *faultStore, id string) leaseBody {
	t.Helper()
	o, ok := s.object("fleet/leases/" + id + ".json")
	if !ok {
		t.Fatalf("no lease of %s", id)
	}
	var l leaseBody
	if err := json.Unmarshal(o.Body, &l); err != nil {
		t.Fatal(err)
	}
	return l
}

// await polls cond every 20 ms for up to 4 ttls: the session's renewals
// come every ttl/3 on the real clock.
func await(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(4 * MinTTL); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within %v", what, 4*MinTTL)
		}
	}
}

func TestLeaseNamesTheSessionAndIsNotRenewed(t *testing.T) {
	t.Parallel()
	p, s := setup(t)
	sess := withSession(t, p)
	c, err := p.Claim(context.Background(), make(chan struct{}), pending(t, p, s, "a"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Drop()
	tok, _, _ := sess.current()
	if l := leaseOf(t, s, "a"); l.Session != tok {
		t.Fatalf("lease names session %q, want %q", l.Session, tok)
	}
	before := leaseOf(t, s, "a").Nonce
	time.Sleep(MinTTL) // three renewal periods
	if valid, lost, _ := c.Hold(); !valid || lost {
		t.Errorf("claim valid %v lost %v after a ttl, want valid: the session vouches for it", valid, lost)
	}
	if after := leaseOf(t, s, "a").Nonce; after != before {
		t.Error("the lease was rewritten while its cell ran: only the session should be renewed")
	}
}

func TestCancelRingsTheSessionAndWaitsUntilHeard(t *testing.T) {
	t.Parallel()
	p, s := setup(t)
	sess := withSession(t, p)
	c, err := p.Claim(context.Background(), make(chan struct{}), pending(t, p, s, "a"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Drop()
	res, err := New(p.cfg, s).Cancel(context.Background(), "a", "bob")
	if err != nil || res.Node != "n1" {
		t.Fatalf("Cancel = %+v, %v; want the holder n1, heard", res, err)
	}
	select {
	case <-c.Cancelled():
	default:
		t.Fatal("the tool said the holder heard, and the claim carries no mark")
	}
	tok, _, _ := sess.current()
	o, _ := s.object("fleet/sessions/" + tok + ".json")
	if strings.Contains(string(o.Body), `"ring"`) {
		t.Errorf("the session still rings after the holder heard: %s", o.Body)
	}
}

func TestEndedSessionMovesTheLeasesStillOurs(t *testing.T) {
	t.Parallel()
	p, s := setup(t)
	sess := withSession(t, p)
	c, err := p.Claim(context.Background(), make(chan struct{}), pending(t, p, s, "a"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Drop()
	old, _, _ := sess.current()
	s.remove(t, "fleet/sessions/"+old+".json") // as a recoverer ends a stale one
	await(t, "move to a new session", func() bool {
		tok, _, ok := sess.current()
		return ok && tok != old && leaseOf(t, s, "a").Session == tok
	})
	await(t, "valid claim", func() bool { valid, _, _ := c.Hold(); return valid })
	if c.Lost() {
		t.Error("a lease nobody took over was lost")
	}
}

func TestEndedSessionLosesTheLeasesTakenOver(t *testing.T) {
	t.Parallel()
	p, s := setup(t)
	sess := withSession(t, p)
	c, err := p.Claim(context.Background(), make(chan struct{}), pending(t, p, s, "a"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Drop()
	old, _, _ := sess.current()
	// A recoverer ends the session, then takes the lease over.
	s.remove(t, "fleet/sessions/"+old+".json")
	l := leaseOf(t, s, "a").successor("n2", newToken(), MinTTL)
	body, _ := encodeLease(&l, time.Now())
	if _, err := s.Store.Put(context.Background(), "fleet/leases/a.json", body, store.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	await(t, "lost claim", c.Lost)
	if valid, _, _ := c.Hold(); valid {
		t.Error("a lost claim is valid")
	}
	if got := leaseOf(t, s, "a").Token; got != l.Token {
		t.Errorf("lease token %q, want the recoverer's: the holder wrote over a takeover", got)
	}
}

func TestRecoveryEndsADeadSessionOnceForAllItsLeases(t *testing.T) {
	t.Parallel()
	p, s := setup(t)
	sess := withSession(t, p)
	for _, id := range []string{"a", "b", "c"} {
		if _, err := p.Claim(context.Background(), make(chan struct{}), pending(t, p, s, id)); err != nil {
			t.Fatal(err)
		}
	}
	sess.mu.Lock()
	obj := sess.obj
	sess.mu.Unlock()
	obj.drop() // the holder dies: its session is renewed no more

	r := New(p.cfg, s)
	r.cfg.Node = "n2"
	withSession(t, r)
	await(t, "the three specs back in pending/", func() bool {
		if _, err := r.RecoverIfDue(context.Background(), make(chan struct{})); err != nil {
			t.Fatal(err)
		}
		return s.has("fleet/pending/a.json") && s.has("fleet/pending/b.json") && s.has("fleet/pending/c.json")
	})
	deletes := 0
	s.mu.Lock()
	for _, op := range s.log {
		if strings.HasPrefix(op, "DELETE fleet/sessions/") {
			deletes++
		}
	}
	s.mu.Unlock()
	if deletes != 1 {
		t.Errorf("%d deletes of sessions, want one: the dead node's, ended once for its three leases", deletes)
	}
}
