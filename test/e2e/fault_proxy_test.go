package e2e

// Helpers of the tests that drive fleetd through the fault proxy and check
// the claim protocol's invariant against S3 directly (env.client, never
// through the proxy).

import (
	"bytes"
	"context"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cellos/fleetd/internal/faultproxy"
)

// caseBVia returns fast() settings over extra, with fleetd pointed at the proxy.
func caseBVia(p *faultproxy.Proxy, extra map[string]string) map[string]string {
	m := fast(extra)
	m["AWS_ENDPOINT_URL_S3"] = p.URL()
	return m
}

// caseBStop sends SIGTERM and expects a clean exit.
func caseBStop(t *testing.T, a *agent) {
	t.Helper()
	a.signal(syscall.SIGTERM)
	if code := a.wait(); code != 0 {
		t.Errorf("fleetd exit code %d, want 0", code)
	}
}

// caseBPoll waits for cond, checking the bucket (or events) it reads every 20 ms.
func caseBPoll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within 60s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startProxy starts a fault proxy in front of the test S3 server, closed
// after the test's agents are stopped (cleanups run last-in first-out, so
// call it before startAgent).
func startProxy(t *testing.T) *faultproxy.Proxy {
	t.Helper()
	needStore(t)
	p, err := faultproxy.Start(env.server.URL, 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// protocolDelete matches the protocol's deletes of the keys key matches, as
// this store gets them (docs/PROTOCOL.md, "Stores"): DELETE with If-Match
// (etag, or any when ""), or, on MinIO, DELETE of a version by its id.
func protocolDelete(key *regexp.Regexp, etag string) faultproxy.Rule {
	if env.store == "minio" {
		return faultproxy.Rule{Method: "DELETE", Key: key, Query: "versionId="}
	}
	return faultproxy.Rule{Method: "DELETE", Key: key, Header: map[string]string{"If-Match": etag}}
}

// keyOf matches exactly the object key of spec id in state.
func keyOf(b *bucket, state, id string) *regexp.Regexp {
	return regexp.MustCompile("^" + regexp.QuoteMeta(b.key(state, id)) + "$")
}

// sessionsOf matches the keys of the agents' session objects in b: an agent's
// one heartbeat, renewed every ttl/3 (If-Match) for all its leases.
func sessionsOf(b *bucket) *regexp.Regexp {
	dir := strings.TrimSuffix(b.key("sessions", "x"), "x.json")
	return regexp.MustCompile("^" + regexp.QuoteMeta(dir) + `[^/]+\.json$`)
}

// awaitFired waits for a proxy rule to have fired n times.
func awaitFired(t *testing.T, h *faultproxy.Handle, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if err := h.Wait(ctx, n); err != nil {
		t.Fatalf("fault rule fired %d of %d times: %v", h.Fired(), n, err)
	}
}

// finalState is where one spec must end, with which bytes.
type finalState struct {
	state string // completed or failed
	body  []byte
}

// assertInvariant checks the queue against S3 directly: every spec of want in
// exactly its state with its bytes unchanged, no other spec anywhere, and
// nothing in pending/, claimed/ or leases/. It returns the result records'
// metadata by id.
func assertInvariant(t *testing.T, b *bucket, want map[string]finalState) map[string]map[string]string {
	t.Helper()
	for _, s := range []string{"pending", "claimed", "leases"} {
		if left := b.ids(s); len(left) != 0 {
			t.Errorf("%s/ holds %v", s, left)
		}
	}
	meta := map[string]map[string]string{}
	seen := map[string]string{}
	for _, s := range []string{"completed", "failed"} {
		for _, id := range b.ids(s) {
			if prev, ok := seen[id]; ok {
				t.Errorf("spec %s is in both %s/ and %s/", id, prev, s)
			}
			seen[id] = s
			w, ok := want[id]
			if !ok {
				t.Errorf("unexpected spec %s in %s/", id, s)
				continue
			}
			if s != w.state {
				t.Errorf("spec %s ended in %s/, want %s/", id, s, w.state)
			}
			body, m := b.get(b.key(s, id))
			if !bytes.Equal(body, w.body) {
				t.Errorf("%s/%s holds %q, want %q", s, id, body, w.body)
			}
			meta[id] = m
		}
	}
	for id, w := range want {
		if _, ok := seen[id]; !ok {
			t.Errorf("spec %s is lost: in neither completed/ nor failed/ (want %s/)", id, w.state)
		}
	}
	return meta
}
