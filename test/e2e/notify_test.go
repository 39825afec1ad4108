package e2e

// Bucket notifications through the real binary: a nats-server per test, and a
// second versitygw over the package's directory (same credentials) that
// publishes the bucket's events to it. Writes through env.client go through
// the first gateway, which publishes nothing: a store that dropped the event.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/cellos/fleetd/internal/natsserver"
	"github.com/cellos/fleetd/internal/toolbin"
	"github.com/cellos/fleetd/internal/versitygw"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// notifyRig is one test's NATS server and event-publishing gateway.
type notifyRig struct {
	t       *testing.T
	nats    *natsserver.Server
	gw      *versitygw.Server
	client  *s3.Client // through gw: every write publishes an event
	subject string
}

func startNotify(t *testing.T) *notifyRig {
	t.Helper()
	needStore(t)
	nbin, err := natsserver.Binary()
	if toolbin.MaySkip(err) {
		t.Skipf("no nats-server here: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	vbin, err := versitygw.Binary()
	if toolbin.MaySkip(err) {
		t.Skipf("no versitygw here: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	r := &notifyRig{t: t, subject: "s3.events." + strings.ReplaceAll(t.Name(), "/", "_")}
	if r.nats, err = natsserver.Start(nbin, t.TempDir()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.nats.Stop() })
	r.gw, err = versitygw.StartWith(vbin, env.server.Dir, versitygw.Options{AccessKey: env.server.AccessKey,
		SecretKey: env.server.SecretKey, NATSURL: r.nats.URL, NATSSubject: r.subject})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.gw.Stop)
	r.client = s3.New(s3.Options{
		Region:       "us-east-1",
		BaseEndpoint: aws.String(r.gw.URL),
		UsePathStyle: true,
		Credentials:  credentials.NewStaticCredentialsProvider(env.server.AccessKey, env.server.SecretKey, ""),
	})
	return r
}

// settings point an agent at the publishing gateway and the NATS server. The
// safety-net poll is ten minutes away: a spec that starts within a test came
// by a hint, unless the agent knows notifications are down (then it polls
// every 200 ms).
func (r *notifyRig) settings(extra map[string]string) map[string]string {
	s := map[string]string{
		"AWS_ENDPOINT_URL_S3":                  r.gw.URL,
		"CELLOS_FLEET_NOTIFY_URL":              r.nats.URL,
		"CELLOS_FLEET_NOTIFY_SUBJECT":          r.subject,
		"CELLOS_FLEET_NOTIFY_POLL_INTERVAL_MS": "600000",
	}
	for k, v := range extra {
		s[k] = v
	}
	return s
}

// submit puts a spec through the publishing gateway.
func (r *notifyRig) submit(b *bucket, id string, test map[string]any) {
	r.t.Helper()
	body, _ := json.Marshal(map[string]any{"apiVersion": "cellos/v1", "kind": "ExecutionCell", "spec": map[string]any{"id": id, "test": test}})
	key := b.key("pending", id)
	if _, err := r.client.PutObject(context.Background(), &s3.PutObjectInput{Bucket: &b.name, Key: &key, Body: bytes.NewReader(body)}); err != nil {
		r.t.Fatalf("put %s: %v", key, err)
	}
}

// conn is a client of the test's own on the NATS server.
func (r *notifyRig) conn() *nats.Conn {
	r.t.Helper()
	nc, err := nats.Connect(r.nats.URL)
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(nc.Close)
	return nc
}

// awaitPublishing waits until the gateway publishes to NATS again (it
// reconnects on its own schedule after NATS restarts): it writes probe
// objects outside the queue until one's event arrives. Nothing else can be
// awaited: versitygw logs nothing about it.
func (r *notifyRig) awaitPublishing(b *bucket) {
	r.t.Helper()
	nc := r.conn()
	sub, err := nc.SubscribeSync(r.subject)
	if err != nil {
		r.t.Fatal(err)
	}
	defer sub.Unsubscribe()
	deadline := time.Now().Add(60 * time.Second)
	for i := 0; time.Now().Before(deadline); i++ {
		key := fmt.Sprintf("probe/%d", i)
		if _, err := r.client.PutObject(context.Background(), &s3.PutObjectInput{Bucket: &b.name, Key: &key, Body: strings.NewReader("p")}); err != nil {
			r.t.Fatalf("put %s: %v", key, err)
		}
		// Read everything that came, events buffered over the outage too.
		for {
			msg, err := sub.NextMsg(200 * time.Millisecond)
			if err != nil {
				break
			}
			if strings.Contains(string(msg.Data), key) {
				return
			}
		}
	}
	r.t.Fatal("the gateway published no event within 60s")
}

// awaitSettled waits for the n-th notify.connected line and the listing that
// follows it, the first made at the safety-net interval: after that, none is
// due for that long.
func awaitSettled(t *testing.T, a *agent, n int) {
	t.Helper()
	a.logs.awaitEvent(t, "notify.connected", n)
	timeout := time.After(90 * time.Second)
	for {
		a.logs.mu.Lock()
		changed, seen, done := a.logs.changed, 0, false
		for _, l := range a.logs.lines {
			switch eventOf(l) {
			case "notify.connected":
				seen++
			case "lister.listed":
				var rec struct {
					PollMs int64 `json:"poll_ms"`
				}
				_ = json.Unmarshal([]byte(l), &rec)
				done = done || (seen == n && rec.PollMs >= 1000)
			}
		}
		a.logs.mu.Unlock()
		if done {
			return
		}
		select {
		case <-changed:
		case <-timeout:
			t.Fatalf("no listing after notify.connected #%d within 90s", n)
		}
	}
}

// hinted reports whether agent a took spec id by a hint.
func hinted(a *agent, id string) bool {
	return len(a.logs.eventsWith("lister.hinted", "spec_id", id)) > 0
}

// TestNotifyPickup: with notifications flowing and the poll ten minutes away,
// new specs start, each by a hint, without another LIST.
func TestNotifyPickup(t *testing.T) {
	t.Parallel()
	r := startNotify(t)
	b := newBucket(t)
	// Credentials in the URL (this server checks none) must never be logged.
	withCreds := strings.Replace(r.nats.URL, "nats://", "nats://fleetd:hunter2@", 1)
	a := startAgent(t, b, r.settings(map[string]string{"CELLOS_FLEET_CONCURRENCY": "2", "CELLOS_FLEET_METRICS_ADDR": "127.0.0.1:0",
		"CELLOS_FLEET_NOTIFY_URL": withCreds}))
	awaitSettled(t, a, 1)
	listed := a.logs.countEvent("lister.listed")
	for i := range 3 {
		r.submit(b, fmt.Sprintf("n%d", i), nil)
	}
	b.waitCount("completed", 3)
	for i := range 3 {
		if id := fmt.Sprintf("n%d", i); !hinted(a, id) {
			t.Errorf("spec %s did not start by a hint", id)
		}
	}
	if n := a.logs.countEvent("lister.listed"); n != listed {
		t.Errorf("%d listings of pending/ while notifications flowed, want none", n-listed)
	}
	fams := scrape(t, metricsAddr(t, a))
	if v := sample(t, fams, "fleetd_notify_connected"); v != 1 {
		t.Errorf("fleetd_notify_connected = %v, want 1", v)
	}
	if v := sample(t, fams, "fleetd_notify_events_total", "result", "hint"); v < 3 {
		t.Errorf("hints counted: %v, want at least 3", v)
	}
	if log := a.logs.text(); strings.Contains(log, env.server.SecretKey) || strings.Contains(log, "hunter2") {
		t.Error("a secret reached the log")
	}
	if started := a.logs.events("agent.starting")[0]; !strings.Contains(started["notify_url"].(string), "REDACTED@127.0.0.1") {
		t.Errorf("agent.starting notify_url = %v, want the URL with its user information redacted", started["notify_url"])
	}
}

// TestNotifyHintIsNotTrusted: garbled, oversized and foreign messages are
// counted and dropped; an event for another bucket does not start this
// bucket's spec of that key; one for a key that does not exist costs a read
// and nothing else.
func TestNotifyHintIsNotTrusted(t *testing.T) {
	t.Parallel()
	r := startNotify(t)
	b := newBucket(t)
	a := startAgent(t, b, r.settings(map[string]string{"CELLOS_FLEET_METRICS_ADDR": "127.0.0.1:0"}))
	awaitSettled(t, a, 1)
	// Submitted where no event is published, then hinted by a forged event
	// naming another bucket.
	b.submit("quiet", nil)
	event := func(bucket, key string) []byte {
		m, _ := json.Marshal(map[string]any{"Records": []any{map[string]any{"eventName": "s3:ObjectCreated:Put",
			"s3": map[string]any{"bucket": map[string]any{"name": bucket}, "object": map[string]any{"key": key}}}}})
		return m
	}
	nc := r.conn()
	for _, msg := range [][]byte{
		[]byte("not json"),
		event("someone-else", b.key("pending", "quiet")),
		event(b.name, b.key("pending", strings.Repeat("x", 20<<10))),
		event(b.name, b.key("pending", "ghost")),
	} {
		if err := nc.Publish(r.subject, msg); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	// Events are read in order: once this spec is done, so are the forged.
	r.submit(b, "real", nil)
	b.waitCount("completed", 1)
	if got := b.ids("completed"); got[0] != "real" {
		t.Fatalf("completed %v, want [real]", got)
	}
	if !b.exists(b.key("pending", "quiet")) {
		t.Error("a forged event of another bucket started the spec of its key")
	}
	if b.exists(b.key("completed", "ghost")) || b.exists(b.key("failed", "ghost")) {
		t.Error("a hint for a missing key filed something")
	}
	fams := scrape(t, metricsAddr(t, a))
	if v := sample(t, fams, "fleetd_notify_events_total", "result", "dropped"); v != 3 {
		t.Errorf("dropped = %v, want 3 (garbled, another bucket, oversized)", v)
	}
	if v := sample(t, fams, "fleetd_notify_events_total", "result", "hint"); v < 2 {
		t.Errorf("hints = %v, want at least 2 (ghost, real)", v)
	}
}

// TestNotifyLostAndBack: NATS stopped, the agent says so once and polls at
// the poll interval; NATS back, it takes hints again without a restart.
func TestNotifyLostAndBack(t *testing.T) {
	t.Parallel()
	r := startNotify(t)
	b := newBucket(t)
	a := startAgent(t, b, r.settings(nil))
	awaitSettled(t, a, 1)
	r.submit(b, "before", nil)
	b.waitCount("completed", 1)
	if !hinted(a, "before") {
		t.Error("spec before did not start by a hint")
	}

	r.nats.Stop()
	a.logs.awaitEvent(t, "notify.lost", 1)
	r.submit(b, "during", nil) // its event is lost: NATS is down
	b.waitCount("completed", 2)
	if hinted(a, "during") {
		t.Error("spec during started by a hint while NATS was down")
	}

	if err := r.nats.Start(); err != nil {
		t.Fatal(err)
	}
	awaitSettled(t, a, 2)
	r.awaitPublishing(b)
	r.submit(b, "after", nil)
	b.waitCount("completed", 3)
	if !hinted(a, "after") {
		t.Error("spec after did not start by a hint once NATS was back")
	}
	if n := a.logs.countEvent("notify.lost"); n != 1 {
		t.Errorf("%d notify.lost lines for one outage, want 1", n)
	}
}

// TestNotifyConsumerCut: the agent's consumer deleted under it (an operator,
// a server losing state), it sets it up again and takes hints.
func TestNotifyConsumerCut(t *testing.T) {
	t.Parallel()
	r := startNotify(t)
	b := newBucket(t)
	a := startAgent(t, b, r.settings(nil))
	awaitSettled(t, a, 1)
	js, err := jetstream.New(r.conn())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	deleted := 0
	for name := range js.StreamNames(ctx).Name() {
		s, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		for c := range s.ConsumerNames(ctx).Name() {
			if err := s.DeleteConsumer(ctx, c); err != nil {
				t.Fatal(err)
			}
			deleted++
		}
	}
	if deleted != 1 {
		t.Fatalf("deleted %d consumers, want the agent's one", deleted)
	}
	a.logs.awaitEvent(t, "notify.lost", 1)
	awaitSettled(t, a, 2)
	r.submit(b, "after-cut", nil)
	b.waitCount("completed", 1)
	if !hinted(a, "after-cut") {
		t.Error("spec after-cut did not start by a hint")
	}
}

// TestNotifyStoreDropsEvent: a spec whose event the store never published
// starts by the safety-net poll.
func TestNotifyStoreDropsEvent(t *testing.T) {
	t.Parallel()
	r := startNotify(t)
	b := newBucket(t)
	a := startAgent(t, b, r.settings(map[string]string{"CELLOS_FLEET_NOTIFY_POLL_INTERVAL_MS": "1000"}))
	awaitSettled(t, a, 1)
	b.submit("unannounced", nil) // through the gateway that publishes nothing
	b.waitCount("completed", 1)
	if hinted(a, "unannounced") {
		t.Error("a spec nobody announced started by a hint")
	}
}

// TestNotifyBusyAgentPassesHints: a hint goes to an agent with a free slot,
// never waits on a busy one: with one agent's only slot held, a new spec
// starts on the other at once.
func TestNotifyBusyAgentPassesHints(t *testing.T) {
	t.Parallel()
	r := startNotify(t)
	b := newBucket(t)
	one := map[string]string{"CELLOS_FLEET_CONCURRENCY": "1"}
	agents := []*agent{startAgent(t, b, r.settings(one)), startAgent(t, b, r.settings(one))}
	for _, a := range agents {
		awaitSettled(t, a, 1)
	}
	release := filepath.Join(t.TempDir(), "release")
	t.Cleanup(func() { _ = os.WriteFile(release, nil, 0o600) })
	r.submit(b, "long", map[string]any{"waitFor": release})
	busy, free := agents[0], agents[1]
	deadline := time.Now().Add(90 * time.Second)
	for starts(busy.cellEvents())["long"] == 0 {
		if starts(free.cellEvents())["long"] > 0 {
			busy, free = free, busy
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("spec long did not start within 90s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	for i := range 4 {
		r.submit(b, fmt.Sprintf("short%d", i), nil)
	}
	b.waitCount("completed", 4) // long is still running: its slot held
	for i := range 4 {
		id := fmt.Sprintf("short%d", i)
		if starts(free.cellEvents())[id] != 1 || !hinted(free, id) {
			t.Errorf("spec %s: starts on the free agent %d, hinted %v; want 1 by a hint", id, starts(free.cellEvents())[id], hinted(free, id))
		}
	}
	if err := os.WriteFile(release, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	b.waitCount("completed", 5)
	for _, a := range agents {
		if n := a.logs.countEvent("claim.conflict"); n != 0 {
			t.Errorf("%d claim conflicts: each key should reach one agent", n)
		}
	}
}

// awaitLaneSettled is awaitSettled for one lane of an agent serving several:
// its consumer connected, then a listing of the lane at the safety-net
// interval.
func awaitLaneSettled(t *testing.T, a *agent, lane string) {
	t.Helper()
	timeout := time.After(90 * time.Second)
	for {
		a.logs.mu.Lock()
		changed, connected, done := a.logs.changed, false, false
		for _, l := range a.logs.lines {
			var rec struct {
				Event  string `json:"event"`
				Lane   string `json:"queue_name"`
				PollMs int64  `json:"poll_ms"`
			}
			if json.Unmarshal([]byte(l), &rec) != nil || rec.Lane != lane {
				continue
			}
			connected = connected || rec.Event == "notify.connected"
			done = done || connected && rec.Event == "lister.listed" && rec.PollMs >= 1000
		}
		a.logs.mu.Unlock()
		if done {
			return
		}
		select {
		case <-changed:
		case <-timeout:
			t.Fatalf("lane %s: no listing after its notify.connected within 90s", lane)
		}
	}
}

// TestNotifyServesEveryLane: an agent serving two lanes (issue 22's weighted
// lanes) takes each lane's events through a consumer of its own: specs
// submitted to either lane start by a hint, with the poll ten minutes away,
// and fleetd_notify_connected is 1 with both up.
func TestNotifyServesEveryLane(t *testing.T) {
	t.Parallel()
	r := startNotify(t)
	b := newBucket(t)
	a := startAgent(t, b, r.settings(map[string]string{"CELLOS_FLEET_LANES": "urgent=3,batch=1",
		"CELLOS_FLEET_CONCURRENCY": "2", "CELLOS_FLEET_METRICS_ADDR": "127.0.0.1:0"}))
	lanes := []string{"urgent", "batch"}
	for _, lane := range lanes {
		awaitLaneSettled(t, a, lane)
	}
	listed := a.logs.countEvent("lister.listed")
	for _, lane := range lanes {
		for i := range 2 {
			id := fmt.Sprintf("%s%d", lane, i)
			body, _ := json.Marshal(map[string]any{"kind": "ExecutionCell", "spec": map[string]any{"id": id}})
			key := b.base + "/" + lane + "/pending/" + id + ".json"
			if _, err := r.client.PutObject(context.Background(), &s3.PutObjectInput{Bucket: &b.name, Key: &key, Body: bytes.NewReader(body)}); err != nil {
				t.Fatalf("put %s: %v", key, err)
			}
		}
	}
	a.logs.awaitEvent(t, "spec.finished", 4)
	for _, lane := range lanes {
		if got := len(b.keys(b.base + "/" + lane + "/completed/")); got != 2 {
			t.Errorf("%s/completed/ holds %d, want 2", lane, got)
		}
		for i := range 2 {
			if id := fmt.Sprintf("%s%d", lane, i); !hinted(a, id) {
				t.Errorf("spec %s of lane %s did not start by a hint", id, lane)
			}
		}
	}
	if n := a.logs.countEvent("lister.listed"); n != listed {
		t.Errorf("%d listings while notifications flowed to both lanes, want none", n-listed)
	}
	if v := sample(t, scrape(t, metricsAddr(t, a)), "fleetd_notify_connected"); v != 1 {
		t.Errorf("fleetd_notify_connected = %v, want 1", v)
	}
}
