package main

// Scenario 15: bucket notifications over NATS against polling, in one run.

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cellos/fleetd/internal/store"
)

// notifyPickup is one row of pickup latency.
type notifyPickup struct {
	Mode          string
	Specs         int
	P50, P99, Max time.Duration
}

// notifyFleet is one row of many agents on one lane.
type notifyFleet struct {
	Mode                        string
	Agents, Specs               int
	SpecsPerSec                 float64
	ReqPerSpec, ListPerSpec     float64
	ConflictsPer, WastedPerSpec float64
	RunTwice, NeverRun          int
	HintedShare                 float64 // specs started by a hint
	ByOp                        map[string]float64
}

// notifyResult is scenario 15.
type notifyResult struct {
	Pickup  []notifyPickup
	Idle    []idle
	Fleet   []notifyFleet
	Lost    []notifyPickup // pickups while NATS is down, with events dropped, and after NATS returns
	NetPoll time.Duration
}

// notifySettings turn notifications on at the default poll and safety net.
func (r *rig) notifySettings(extra map[string]string) map[string]string {
	s := map[string]string{"CELLOS_FLEET_NOTIFY_URL": r.nats.URL, "CELLOS_FLEET_NOTIFY_SUBJECT": r.subject,
		"CELLOS_FLEET_NOTIFY_POLL_INTERVAL_MS": fmt.Sprint(r.netPoll.Milliseconds())}
	for k, v := range extra {
		s[k] = v
	}
	return s
}

// awaitCount waits until f() reaches n.
func awaitCount(what string, f func() int64, n int64) error {
	deadline := time.Now().Add(2 * time.Minute)
	for f() < n {
		if time.Now().After(deadline) {
			return fmt.Errorf("no %s within 2m", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return nil
}

// pickups submits n specs one at a time through put, each at a random moment
// of its own window on a fixed timeline, and returns the sorted times from
// each PUT's answer to the agent's "cell started".
func pickups(a *agent, n int, window time.Duration, prefix string, put func(key string, body []byte) error) ([]time.Duration, error) {
	var lat []time.Duration
	base := time.Now().Add(200 * time.Millisecond)
	for i := range n {
		at := base.Add(time.Duration(i)*window + time.Duration(rand.Int64N(int64(window))))
		time.Sleep(time.Until(at))
		id := fmt.Sprintf("%s-%03d", prefix, i)
		if err := put("fleet/pending/"+id+".json", noopSpec(id, "")); err != nil {
			return nil, err
		}
		sent := time.Now()
		select {
		case started := <-a.cellStart:
			lat = append(lat, started.Sub(sent))
		case <-time.After(2 * time.Minute):
			return nil, fmt.Errorf("spec %s not started within 2m", id)
		}
	}
	slices.Sort(lat)
	return lat, nil
}

func row(mode string, lat []time.Duration) notifyPickup {
	return notifyPickup{Mode: mode, Specs: len(lat), P50: pct(lat, 50), P99: pct(lat, 99), Max: lat[len(lat)-1]}
}

func (r *rig) putter(bucket string, quiet bool) func(key string, body []byte) error {
	client := r.direct
	if quiet {
		client = r.client(r.quiet.URL)
	}
	storage := store.New(client, bucket, store.Policy{})
	return func(key string, body []byte) error {
		_, err := storage.Put(context.Background(), key, body, store.PutOptions{})
		return err
	}
}

// notifyScenario measures pickup latency (notifications vs the default 5 s
// poll), an idle agent's requests, 16 agents × 4 on one lane, and lost
// notifications: NATS down, events the store never sent, NATS back.
func (r *rig) notifyScenario(o options) (notifyResult, error) {
	res := notifyResult{NetPoll: o.netPoll}
	r.netPoll = o.netPoll
	step := func(format string, a ...any) { fmt.Fprintf(os.Stderr, "bench: notify: "+format+"\n", a...) }

	if o.notifyParts["pickup"] {
		if err := r.notifyPickups(o, &res); err != nil {
			return res, err
		}
	}
	if o.notifyParts["idle"] {
		for _, notify := range []bool{false, true} {
			var settings map[string]string
			mode := "poll 5 s"
			if notify {
				settings, mode = r.notifySettings(nil), "notifications"
			}
			step("idle %s for %v", mode, o.idle)
			i, err := r.idleWith(o.idle, settings)
			if err != nil {
				return res, err
			}
			res.Idle = append(res.Idle, i)
		}
	}
	if o.notifyParts["fleet"] {
		for _, notify := range []bool{false, true} {
			step("%d agents x concurrency 4, %d specs, notifications %v", o.notifyAgents, o.fleetSpecs, notify)
			f, err := r.notifyFleet(o.notifyAgents, o.fleetSpecs, notify)
			if err != nil {
				return res, err
			}
			res.Fleet = append(res.Fleet, f)
		}
	}
	return res, nil
}

// notifyPickups measures pickup latency both ways, then lost notifications.
func (r *rig) notifyPickups(o options, res *notifyResult) error {
	step := func(format string, a ...any) { fmt.Fprintf(os.Stderr, "bench: notify: "+format+"\n", a...) }
	// Pickup, polling at the default 5 s.
	step("pickup polling at 5 s, %d specs", o.notifyPollPickups)
	bucket, err := r.newBucket()
	if err != nil {
		return err
	}
	a, err := r.startAgent(bucket, nil, true)
	if err != nil {
		return err
	}
	lat, err := pickups(a, o.notifyPollPickups, 10*time.Second, "poll", r.putter(bucket, false))
	a.stop()
	if err != nil {
		return err
	}
	res.Pickup = append(res.Pickup, row("poll 5 s", lat))

	// Pickup with notifications, then the same agent through a NATS outage.
	step("pickup with notifications, %d specs", o.notifyPickups)
	if bucket, err = r.newBucket(); err != nil {
		return err
	}
	if a, err = r.startAgent(bucket, r.notifySettings(nil), true); err != nil {
		return err
	}
	defer a.stop()
	if err := awaitCount("notify.connected", a.connected.Load, 1); err != nil {
		return err
	}
	if lat, err = pickups(a, o.notifyPickups, 200*time.Millisecond, "hint", r.putter(bucket, false)); err != nil {
		return err
	}
	res.Pickup = append(res.Pickup, row("notifications", lat))

	step("events the store never sent: %d specs through a gateway that publishes nothing", o.lostPickups)
	// At once, so that one safety-net poll takes them all: each waits for it.
	put := r.putter(bucket, true)
	sent := time.Now()
	for i := range o.lostPickups {
		id := fmt.Sprintf("unsent-%03d", i)
		if err := put("fleet/pending/"+id+".json", noopSpec(id, "")); err != nil {
			return err
		}
	}
	lat = nil
	for range o.lostPickups {
		select {
		case t := <-a.cellStart:
			lat = append(lat, t.Sub(sent))
		case <-time.After(2 * res.NetPoll):
			return errors.New("a spec whose event was never sent did not start within two safety-net intervals")
		}
	}
	slices.Sort(lat)
	res.Lost = append(res.Lost, row(fmt.Sprintf("events never sent (safety-net poll %v)", o.netPoll), lat))

	step("NATS stopped: %d specs", o.lostPickups)
	r.nats.Stop()
	if err := awaitCount("notify.lost", a.lost.Load, 1); err != nil {
		return err
	}
	if lat, err = pickups(a, o.lostPickups, 10*time.Second, "down", r.putter(bucket, false)); err != nil {
		return err
	}
	res.Lost = append(res.Lost, row("NATS down (poll 5 s)", lat))

	step("NATS back: %d specs", o.notifyPickups)
	if err := r.nats.Start(); err != nil {
		return err
	}
	if err := awaitCount("notify.connected again", a.connected.Load, 2); err != nil {
		return err
	}
	if err := r.awaitPublishing(bucket); err != nil {
		return err
	}
	if lat, err = pickups(a, o.notifyPickups, 200*time.Millisecond, "back", r.putter(bucket, false)); err != nil {
		return err
	}
	res.Lost = append(res.Lost, row("NATS back, no restart", lat))
	a.stop()
	return nil
}

// awaitPublishing waits until the gateway publishes again after NATS came
// back (it reconnects on its own schedule): probe objects outside the queue
// until one's event arrives.
func (r *rig) awaitPublishing(bucket string) error {
	nc, err := nats.Connect(r.nats.URL)
	if err != nil {
		return err
	}
	defer nc.Close()
	sub, err := nc.SubscribeSync(r.subject)
	if err != nil {
		return err
	}
	put := r.putter(bucket, false)
	deadline := time.Now().Add(3 * time.Minute)
	for i := 0; time.Now().Before(deadline); i++ {
		key := fmt.Sprintf("probe/%d", i)
		if err := put(key, []byte("p")); err != nil {
			return err
		}
		// Read everything that came, events buffered over the outage too.
		for {
			msg, err := sub.NextMsg(200 * time.Millisecond)
			if err != nil {
				break
			}
			if strings.Contains(string(msg.Data), key) {
				return nil
			}
		}
	}
	return errors.New("versitygw did not publish again within 3m of NATS coming back")
}

// notifyFleet runs k agents at concurrency 4 on one lane. Polling (1 s, as in
// scenario 7): the specs wait in pending/ before the agents start.
// Notifications: the specs are submitted once every agent is connected, as
// work arrives in a running fleet.
func (r *rig) notifyFleet(k, n int, notify bool) (notifyFleet, error) {
	row := notifyFleet{Mode: "poll 1 s, specs pending at start", Agents: k, Specs: n}
	if notify {
		row.Mode = "notifications, specs submitted to the running fleet"
	}
	bucket, err := r.newBucket()
	if err != nil {
		return row, err
	}
	if !notify {
		if err := r.submit(bucket, n, ""); err != nil {
			return row, err
		}
	}
	r.counts.reset()
	events := filepath.Join(r.dir, fmt.Sprintf("%s-events", bucket))
	var agents []*agent
	defer func() {
		for _, a := range agents {
			a.stop()
		}
	}()
	for i := range k {
		settings := map[string]string{
			"CELLOS_FLEET_CONCURRENCY": "4", "CELLOS_FLEET_POLL_INTERVAL_MS": "1000",
			"CELLOS_FLEET_NODE_ID":    fmt.Sprintf("bench-%d", i),
			"CELLOS_FLEET_SUPERVISOR": r.supervisor, "FLEETD_TEST_EVENTS": events,
			"CELLOS_FLEET_LOG_LEVEL": "debug",
		}
		if notify {
			settings = r.notifySettings(settings)
		}
		a, err := r.startAgent(bucket, settings, false)
		if err != nil {
			return row, err
		}
		agents = append(agents, a)
	}
	start := time.Now()
	if notify {
		// Each agent lists once more when notifications come up; from then
		// on only its safety-net poll lists.
		for _, a := range agents {
			if err := awaitCount("a listing at the safety-net interval", a.settled.Load, 1); err != nil {
				return row, err
			}
		}
		r.counts.reset() // start-up is not work
		start = time.Now()
		if err := r.submit(bucket, n, ""); err != nil {
			return row, err
		}
	}
	if err := waitFinished(10*time.Minute, int64(n), agents...); err != nil {
		return row, err
	}
	if !notify {
		start = agents[0].readyAt()
		for _, a := range agents[1:] {
			if t := a.readyAt(); t.Before(start) {
				start = t
			}
		}
	}
	elapsed := time.Since(start)
	ops := r.counts.ops()
	reqs, conflicts := countWork(ops), r.counts.preconditionFailed.Load()
	row.ByOp = perOp(ops, float64(n))
	var hinted int64
	for _, a := range agents {
		hinted += a.hinted.Load()
	}
	runs, err := runCounts(events)
	if err != nil {
		return row, err
	}
	for i := range n {
		switch runs[fmt.Sprintf("spec-%06d", i)] {
		case 0:
			row.NeverRun++
		case 1:
		default:
			row.RunTwice++
		}
	}
	row.SpecsPerSec = float64(n) / elapsed.Seconds()
	row.ReqPerSpec = float64(reqs) / float64(n)
	row.ListPerSpec = row.ByOp["LIST"]
	row.ConflictsPer = float64(conflicts) / float64(n)
	row.WastedPerSpec = max(0, row.ReqPerSpec-happyPath)
	row.HintedShare = float64(hinted) / float64(n)
	return row, nil
}

// happyPath is a spec's requests when nothing is wasted: GET and HEAD of
// pending/, six writes (report section 12).
const happyPath = 8.0

// markdown writes section 15.
func (x *notifyResult) markdown(p func(string, ...any)) {
	p("## 15. Notifications over NATS vs polling\n\n")
	p("versitygw publishes every write's event to a nats-server (JetStream, memory stream) on loopback; agents with `CELLOS_FLEET_NOTIFY_URL` take each new key from their lane's consumer while a worker is idle; the safety-net poll is %v, the poll 5 s (default) unless noted.\n\n", x.NetPoll)
	p("**Pickup latency**, one idle agent (concurrency 1), specs submitted one at a time at random moments (windows of 10 s polling, 200 ms with notifications); PUT answered → `cell started`.\n\n")
	p("| mode | specs | p50 | p99 | max |\n|---|---|---|---|---|\n")
	for _, r := range x.Pickup {
		p("| %s | %d | %v | %v | %v |\n", r.Mode, r.Specs, r.P50.Round(time.Millisecond), r.P99.Round(time.Millisecond), r.Max.Round(time.Millisecond))
	}
	p("\n**Lost notifications**, the same agent: specs whose events the store never sent (written through a second gateway over the same directory that publishes nothing, all at once), specs while NATS is stopped, then specs after NATS restarts (no fleetd restart).\n\n")
	p("| case | specs | p50 | p99 | max |\n|---|---|---|---|---|\n")
	for _, r := range x.Lost {
		p("| %s | %d | %v | %v | %v |\n", r.Mode, r.Specs, r.P50.Round(time.Millisecond), r.P99.Round(time.Millisecond), r.Max.Round(time.Millisecond))
	}
	p("\n**Idle cost**, empty queue, %.0f s each, requests/min by operation and area:\n\n", x.idleSeconds())
	p("| mode | S3 requests/min | LIST pending | recovery (LIST leases, LIST claimed, PUT/HEAD recovery) | CPU %% of one core |\n|---|---|---|---|---|\n")
	for i, r := range x.Idle {
		mode := "poll 5 s"
		if i == 1 {
			mode = "notifications"
		}
		pending := r.PerMin[opArea{"LIST", "pending"}]
		p("| %s | %.1f | %.2f | %.2f | %.3f |\n", mode, r.ReqsPerMinute, pending, r.ReqsPerMinute-pending, r.CPUPercent)
	}
	p("\n**Many agents on one lane**, concurrency 4 each, no-op specs (the test supervisor), log level debug in both rows. Requests exclude start-up. Wasted: requests per spec beyond the happy path's 8. Hinted: share of specs a hint handed out.\n\n")
	p("| mode | agents | specs | specs/s | requests/spec | LIST/spec | GET/spec | conflicts/spec | wasted/spec | hinted | run twice | never run |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range x.Fleet {
		p("| %s | %d | %d | %.1f | %.2f | %.3f | %.2f | %.3f | %.2f | %.2f | %d | %d |\n", r.Mode, r.Agents, r.Specs, r.SpecsPerSec, r.ReqPerSpec, r.ListPerSpec, r.ByOp["GET"], r.ConflictsPer, r.WastedPerSpec, r.HintedShare, r.RunTwice, r.NeverRun)
	}
	p("\n")
}

func (x *notifyResult) idleSeconds() float64 {
	if len(x.Idle) == 0 {
		return 0
	}
	return x.Idle[0].Seconds
}
