package e2e

// Issue 18's six ways to lose a spec, file it twice or drop an operator's
// word, each forced at its exact step through the real fleetd binary,
// versitygw, the fault proxy and real test supervisors. Each test asserts
// the behaviour the intents design promises: whoever takes over a stopped
// holder's lease finishes its intent (cancel, reject, requeue); a cancel mark
// is honoured by whoever ends the claim; a request that lands after its sender
// gave up changes nothing; prune deletes only what it judged; a worker panic
// ends its claim. The queue is checked against S3 directly (env.client).

import (
	"bytes"
	"context"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/cellos/fleetd/internal/faultproxy"
)

// tool is a fleetd operator command running in the background, so a test
// can stop it mid-way as Ctrl-C or a lost host would.
type toolProc struct {
	t        *testing.T
	cmd      *exec.Cmd
	out, err bytes.Buffer
	exited   chan struct{}
}

// startTool runs `fleetd args...` on bucket b with vars over the test
// server's settings. The test's cleanup kills it if it is still running.
func startTool(t *testing.T, b *bucket, vars map[string]string, args ...string) *toolProc {
	t.Helper()
	tl := &toolProc{t: t, exited: make(chan struct{})}
	tl.cmd = exec.Command(env.fleetd, args...)
	tl.cmd.Env = append(os.Environ(), env.server.Env()...)
	tl.cmd.Env = append(tl.cmd.Env, "CELLOS_FLEET_BUCKET="+b.name)
	for k, v := range vars {
		tl.cmd.Env = append(tl.cmd.Env, k+"="+v)
	}
	tl.cmd.Stdout, tl.cmd.Stderr = &tl.out, &tl.err
	if err := tl.cmd.Start(); err != nil {
		t.Fatalf("start fleetd %v: %v", args, err)
	}
	go func() {
		_ = tl.cmd.Wait()
		close(tl.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-tl.exited:
		default:
			_ = tl.cmd.Process.Kill()
			<-tl.exited
		}
	})
	return tl
}

// kill stops the tool with SIGKILL: nothing of it runs after this returns.
func (tl *toolProc) kill() {
	tl.t.Helper()
	_ = tl.cmd.Process.Signal(syscall.SIGKILL)
	tl.wait()
}

// wait waits for the tool to exit and returns its exit code.
func (tl *toolProc) wait() int {
	tl.t.Helper()
	select {
	case <-tl.exited:
		return tl.cmd.ProcessState.ExitCode()
	case <-time.After(90 * time.Second):
		tl.t.Fatalf("fleetd %v did not exit within 90s", tl.cmd.Args[1:])
		return -1
	}
}

// intentsAgent is an agent's settings with a 3 s lease, through proxy when
// it is not nil.
func intentsAgent(proxy *faultproxy.Proxy, node string, extra map[string]string) map[string]string {
	m := fast(map[string]string{"CELLOS_FLEET_NODE_ID": node})
	if proxy != nil {
		m["AWS_ENDPOINT_URL_S3"] = proxy.URL()
	}
	for k, v := range extra {
		m[k] = v
	}
	return m
}

// toolVia is an operator tool's settings: a 3 s lease, through the proxy.
func toolVia(url string, extra map[string]string) map[string]string {
	m := map[string]string{"AWS_ENDPOINT_URL_S3": url, "CELLOS_FLEET_LEASE_TTL_MS": "3000"}
	for k, v := range extra {
		m[k] = v
	}
	return m
}

// Behaviour 1: `fleetd cancel` of a pending spec stopped between its two
// writes (failed/ written, the DELETE of pending/ never landing, the tool
// killed) leaves a rejecting lease. Its recoverer must finish the cancel:
// delete the pending/ version the cancel judged. Before intents it saw a
// result under the holder's token, cleared only the lease, and the next poll
// ran the spec: it ended in failed/ and completed/.
func TestIntentInterruptedCancelIsFinished(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	p := startProxy(t)
	body := b.submit("c", map[string]any{"sleepMs": 0})
	// Every DELETE of pending/c through the proxy is held and never
	// released: only the tool goes through the proxy, and it is killed.
	held := p.Add(faultproxy.Rule{Method: "DELETE", Key: keyOf(b, "pending", "c"), Action: faultproxy.Hold})
	cancel := startTool(t, b, toolVia(p.URL(), nil), "cancel", "c")
	awaitFired(t, held, 1) // failed/c is written; the tool holds the lease
	cancel.kill()
	if !b.exists(b.key("failed", "c")) || !b.exists(b.key("pending", "c")) || !b.exists(b.key("leases", "c")) {
		t.Fatalf("after the interrupted cancel: failed %v pending %v leases %v, want all three",
			b.ids("failed"), b.ids("pending"), b.ids("leases"))
	}

	r := startAgent(t, b, intentsAgent(nil, "recoverer", nil))
	r.logs.awaitEvent(t, "lease.takeover", 1)
	b.waitSettled("c")
	caseBStop(t, r)
	meta := assertInvariant(t, b, map[string]finalState{"c": {"failed", body}})
	if got := meta["c"]["fleetd-outcome"]; got != "cancelled" {
		t.Errorf("failed/c outcome = %q, want cancelled", got)
	}
	if got := starts(r.cellEvents()); got["c"] != 0 {
		t.Errorf("the cancelled spec ran %d times, want never", got["c"])
	}
}

// Behaviour 1, reject: an agent filing an oversized spec dies (kill -9)
// between writing failed/ and deleting pending/; a node with a larger
// CELLOS_FLEET_MAX_SPEC_BYTES recovers its lease. The rejection must be
// finished, not undone by a run.
func TestIntentInterruptedRejectIsFinished(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	p := startProxy(t)
	body := b.submit("big", map[string]any{"sleepMs": 0, "pad": strings.Repeat("x", 200)})
	held := p.Add(faultproxy.Rule{Method: "DELETE", Key: keyOf(b, "pending", "big"), Action: faultproxy.Hold})
	small := startAgent(t, b, intentsAgent(p, "small", map[string]string{"CELLOS_FLEET_MAX_SPEC_BYTES": "100"}))
	awaitFired(t, held, 1) // failed/big is written
	small.crash()
	if !b.exists(b.key("failed", "big")) || !b.exists(b.key("pending", "big")) {
		t.Fatalf("after the crash: failed %v pending %v, want both", b.ids("failed"), b.ids("pending"))
	}

	large := startAgent(t, b, intentsAgent(nil, "large", nil)) // 1 MB: the spec is valid here
	large.logs.awaitEvent(t, "lease.takeover", 1)
	b.waitSettled("big")
	caseBStop(t, large)
	meta := assertInvariant(t, b, map[string]finalState{"big": {"failed", body}})
	if got := meta["big"]["fleetd-outcome"]; got != "rejected" {
		t.Errorf("failed/big outcome = %q, want rejected", got)
	}
	if got := meta["big"]["fleetd-reason"]; !strings.Contains(got, "over the limit of 100") {
		t.Errorf("failed/big reason = %q, want the rejection's", got)
	}
	if got := starts(large.cellEvents()); got["big"] != 0 {
		t.Errorf("the rejected spec ran %d times, want never", got["big"])
	}
}

// Behaviour 2: `fleetd requeue` stops before deleting failed/ (pending/ is
// written); the recoverer that takes its lease over stops too (kill -9) before
// its own delete of failed/ lands. The next recoverer must carry the requeue
// through: failed/ deleted, the requeued run's result the only record.
func TestIntentRequeueSurvivesTwoStoppedHolders(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	p := startProxy(t)
	body := []byte(`{"apiVersion":"cellos/v1","kind":"ExecutionCell","spec":{"id":"f","test":{"sleepMs":0}}}`)
	b.putRaw(b.key("failed", "f"), body)
	// Held for good: the requeue tool's delete, then the first recoverer's.
	held := p.Add(faultproxy.Rule{Method: "DELETE", Key: keyOf(b, "failed", "f"), Action: faultproxy.Hold})
	requeue := startTool(t, b, toolVia(p.URL(), nil), "requeue", "f")
	awaitFired(t, held, 1)
	requeue.kill()
	if !b.exists(b.key("pending", "f")) || !b.exists(b.key("leases", "f")) {
		t.Fatalf("after the interrupted requeue: pending %v leases %v, want f in both", b.ids("pending"), b.ids("leases"))
	}

	first := startAgent(t, b, intentsAgent(p, "first", nil))
	first.logs.awaitEvent(t, "lease.takeover", 1)
	awaitFired(t, held, 2) // the first recoverer finishing the requeue
	first.crash()

	second := startAgent(t, b, intentsAgent(nil, "second", nil))
	second.logs.awaitEvent(t, "lease.takeover", 1)
	b.waitSettled("f")
	caseBStop(t, second)
	assertInvariant(t, b, map[string]finalState{"f": {"completed", body}})
	if got := starts(second.cellEvents()); got["f"] != 1 {
		t.Errorf("the requeued spec ran %d times, want once", got["f"])
	}
	if got := starts(first.cellEvents()); got["f"] != 0 {
		t.Errorf("the first recoverer ran the spec %d times, want never", got["f"])
	}
}

// cutLease makes every request for leases/<id> and for the agents' sessions
// fail (500, before the store), and every listing of leases/ too, so the
// holder neither renews its session nor reads its lease, and no recovery of
// its own takes the lease over meanwhile. Remove the handles to end the
// outage.
func cutLease(p *faultproxy.Proxy, b *bucket, id string) (lease, session, listing *faultproxy.Handle) {
	lease = p.Add(faultproxy.Rule{Key: keyOf(b, "leases", id), Action: faultproxy.ErrorBefore, Status: 500})
	session = p.Add(faultproxy.Rule{Key: sessionsOf(b), Action: faultproxy.ErrorBefore, Status: 500})
	// Recovery's LIST of leases/ (not a versioned delete's listing of one
	// lease: the SDK sorts the query, so list-type comes first).
	listing = p.Add(faultproxy.Rule{Method: "GET", Key: regexp.MustCompile(`^$`), Query: "list-type=2&prefix=" + url.QueryEscape(b.base+"/leases/"),
		Action: faultproxy.ErrorBefore, Status: 500})
	return lease, session, listing
}

// cancelUnheard runs fleetd cancel of id (straight to S3) while its holder
// cannot reach the store: the mark lands, the holder cannot hear it, and the
// tool says so with exit code 1.
func cancelUnheard(t *testing.T, b *bucket, id string) {
	t.Helper()
	code, out, errOut := runCLI(t, b, "cancel", id)
	if code != 1 || !strings.Contains(errOut, "node holder was asked to stop it and has not answered yet") {
		t.Fatalf("cancel %s = %d %q %q, want exit 1 naming the holder, not yet heard", id, code, out, errOut)
	}
}

// Behaviour 3: the holder's session renewals fail until its cell is frozen;
// `fleetd cancel` (straight to S3) writes its mark meanwhile and says the
// holder has not heard yet. When S3 answers the holder again, it must file
// the spec cancelled — the mark is honoured by whoever ends the claim,
// whatever held the cell — and the spec must not run again.
func TestIntentCancelWhileFencedIsHonoured(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	p := startProxy(t)
	release := filepath.Join(t.TempDir(), "release")
	body := b.submit("x", map[string]any{"waitFor": release})
	a := startAgent(t, b, intentsAgent(p, "holder", map[string]string{"CELLOS_FLEET_LEASE_TTL_MS": "6000"}))
	a.logs.awaitEvent(t, "cell.started", 1)

	lease, session, listing := cutLease(p, b, "x")
	awaitFired(t, session, 1) // a renewal refused
	cancelUnheard(t, b, "x")
	// The holder cannot renew: its window closes and it freezes the cell.
	a.logs.awaitEvent(t, "cell.frozen", 1)
	// A rerun, if there is one, ends at once; the frozen cell cannot see it.
	if err := os.WriteFile(release, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	lease.Remove()
	session.Remove()
	// The holder hears the ring: the frozen cell is stopped, never thawed.
	a.logs.awaitEvent(t, "cell.ended", 1)
	if n := a.logs.countEvent("cell.thawed"); n != 0 {
		t.Errorf("the cancelled cell was thawed %d times", n)
	}
	// The holder has ended its claim (or left it to recovery): its own
	// recovery may list leases/ again.
	a.logs.awaitEvents(t, 1, "spec.released", "spec.finished", "spec.left_to_recovery")
	listing.Remove()
	b.waitSettled("x")
	caseBStop(t, a)
	meta := assertInvariant(t, b, map[string]finalState{"x": {"failed", body}})
	if got := meta["x"]["fleetd-outcome"]; got != "cancelled" {
		t.Errorf("failed/x outcome = %q, want cancelled", got)
	}
	if got := starts(a.cellEvents()); got["x"] != 1 {
		t.Errorf("spec x ran %d times after a confirmed cancel, want once (the run that was stopped)", got["x"])
	}
}

// Behaviour 3, drain: the same gap when the drain deadline stops the cell.
// The cancel mark lands while the holder cannot read its lease; SIGTERM with a
// short drain deadline stops the cell; the holder must file the spec
// cancelled instead of returning it to pending/ for another node to run.
func TestIntentCancelAtDrainDeadlineIsHonoured(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	p := startProxy(t)
	release := filepath.Join(t.TempDir(), "release")
	body := b.submit("d", map[string]any{"waitFor": release})
	// A 15 s lease: its validity (12 s) outlasts the drain deadline by far,
	// so the drain, not the fence, stops the cell.
	a := startAgent(t, b, intentsAgent(p, "holder", map[string]string{
		"CELLOS_FLEET_LEASE_TTL_MS":     "15000",
		"CELLOS_FLEET_DRAIN_TIMEOUT_MS": "300",
	}))
	a.logs.awaitEvent(t, "cell.started", 1)

	lease, session, listing := cutLease(p, b, "d")
	cancelUnheard(t, b, "d")
	a.signal(syscall.SIGTERM)
	a.logs.awaitEvent(t, "cell.ended", 1)
	if err := os.WriteFile(release, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	lease.Remove()
	session.Remove()
	listing.Remove()
	if code := a.wait(); code != 0 {
		t.Errorf("holder exit code %d, want 0", code)
	}
	t.Logf("after the holder's drain: pending %v failed %v leases %v", b.ids("pending"), b.ids("failed"), b.ids("leases"))

	next := startAgent(t, b, intentsAgent(nil, "next", nil))
	b.waitSettled("d")
	caseBStop(t, next)
	meta := assertInvariant(t, b, map[string]finalState{"d": {"failed", body}})
	if got := meta["d"]["fleetd-outcome"]; got != "cancelled" {
		t.Errorf("failed/d outcome = %q, want cancelled", got)
	}
	if got := starts(next.cellEvents()); got["d"] != 0 {
		t.Errorf("spec d ran %d times on another node after a confirmed cancel, want never", got["d"])
	}
}

// Behaviour 5: prune judges completed/p old from its LIST; an identical rerun
// writes a fresh result (same bytes, same ETag) before prune acts on it. The
// fresh result must survive. Prune's lease create is held at the proxy (only
// the tool goes through it) until the rerun has finished; the rerun takes the
// spec's lease itself, so the two cannot overlap.
func TestIntentPruneSparesFreshRerunResult(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	p := startProxy(t)
	const olderThan = 5 * time.Second
	body := b.submit("p", map[string]any{"sleepMs": 0})
	a := startAgent(t, b, intentsAgent(nil, "a", nil))
	a.logs.awaitEvent(t, "spec.finished", 1)
	b.waitSettled("p")
	// The first result must be old for prune: HEAD's Last-Modified and the
	// server's Date have 1-second resolution, hence 2.5 s more. The age is
	// the scenario, not a synchronisation.
	head, err := env.client.HeadObject(context.Background(), &s3.HeadObjectInput{Bucket: &b.name, Key: ptr(b.key("completed", "p"))})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Until(head.LastModified.Add(olderThan + 2500*time.Millisecond)))

	held := p.Add(faultproxy.Rule{Method: "PUT", Key: keyOf(b, "leases", "p"), Action: faultproxy.Hold})
	prune := startTool(t, b, toolVia(p.URL(), map[string]string{"CELLOS_FLEET_S3_TIMEOUT_MS": "60000"}),
		"prune", "--older-than", "5s", "--state", "completed")
	awaitFired(t, held, 1) // prune has judged completed/p old from its listing

	b.submit("p", map[string]any{"sleepMs": 0}) // an identical rerun
	a.logs.awaitEvent(t, "spec.finished", 2)
	b.waitSettled("p")
	held.Release()
	if code := prune.wait(); code != 0 {
		t.Errorf("prune exit %d: %q %q", code, prune.out.String(), prune.err.String())
	}
	t.Logf("prune: %s", strings.TrimSpace(prune.out.String()))
	if !strings.Contains(prune.out.String(), "0 deleted of 1 older") {
		t.Errorf("prune = %q, want completed/p judged old from its listing and then left", prune.out.String())
	}
	caseBStop(t, a)
	if !b.exists(b.key("completed", "p")) {
		t.Fatalf("prune deleted the fresh result of the rerun: completed/ %v, failed/ %v", b.ids("completed"), b.ids("failed"))
	}
	assertInvariant(t, b, map[string]finalState{"p": {"completed", body}})
	if got := starts(a.cellEvents()); got["p"] != 2 {
		t.Errorf("spec p ran %d times, want 2", got["p"])
	}
}

func ptr[T any](v T) *T { return &v }
