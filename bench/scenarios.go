package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cellos/fleetd/internal/store"
)

// throughput is one row of scenarios 1 and 2.
type throughput struct {
	Concurrency  int
	Specs        int
	SpecsPerSec  float64
	ReqPerSpec   float64
	CPUmsPerSpec float64
	PeakRSSMB    float64
	RawReqPerSec float64            // scenario 2: the server driven without fleetd
	Efficiency   float64            // fleetd's request rate / the raw request rate
	ByOp         map[string]float64 // requests per spec by operation, self-test excluded
}

func (r *rig) throughput(c, n int) (throughput, error) {
	row := throughput{Concurrency: c, Specs: n}
	bucket, err := r.newBucket()
	if err != nil {
		return row, err
	}
	if err := r.submit(bucket, n, ""); err != nil {
		return row, err
	}
	r.counts.reset()
	a, err := r.startAgent(bucket, map[string]string{"CELLOS_FLEET_CONCURRENCY": fmt.Sprint(c), "CELLOS_FLEET_POLL_INTERVAL_MS": "1000"}, false)
	if err != nil {
		return row, err
	}
	werr := waitFinished(10*time.Minute, int64(n), a)
	elapsed := time.Since(a.readyAt())
	reqs := r.counts.total.Load()
	row.ByOp = perOp(r.counts.ops(), float64(n))
	st, err := a.stop()
	if werr != nil {
		return row, werr
	}
	if err != nil {
		return row, err
	}
	row.SpecsPerSec = float64(n) / elapsed.Seconds()
	row.ReqPerSpec = float64(reqs) / float64(n)
	row.CPUmsPerSpec = float64(st.cpu.Milliseconds()) / float64(n)
	row.PeakRSSMB = float64(st.peakRSS) / (1 << 20)

	raw, err := r.rawRate(c, n)
	if err != nil {
		return row, err
	}
	row.RawReqPerSec = raw
	row.Efficiency = row.SpecsPerSec * row.ReqPerSpec / raw
	return row, nil
}

// rawRate drives the server through the proxy with fleetd's per-spec request
// mix — same bodies, same conditional headers — from c goroutines, without
// fleetd or a supervisor, and returns requests per second.
func (r *rig) rawRate(c, n int) (float64, error) {
	reqs, _, err := r.rawRun(c, n, nil)
	return reqs, err
}

// rawRun drives the server with fleetd's exact per-spec request mix from c
// goroutines for n specs, without fleetd, running cell (if set) where fleetd
// runs the supervisor. It returns requests/s and specs/s.
func (r *rig) rawRun(c, n int, cell func() error) (reqsPerSec, specsPerSec float64, err error) {
	bucket, err := r.newBucket()
	if err != nil {
		return 0, 0, err
	}
	if err := r.submit(bucket, n, ""); err != nil {
		return 0, 0, err
	}
	storage := store.New(r.proxied, bucket, store.Policy{})
	storage.SetDeleteMode(r.mode)
	lease := []byte(`{"node":"bench","token":"0123456789abcdef01234567","nonce":"0123456789abcdef01234567","epoch":1,"ttl_ms":60000,"attempts":1,"state":"running","written":"2026-01-01T00:00:00.000000000Z"}`)
	meta := map[string]string{"fleetd-node": "bench", "fleetd-attempts": "1", "fleetd-token": "0123456789abcdef01234567"}
	ids := make(chan string, n)
	for i := range n {
		ids <- fmt.Sprintf("spec-%06d", i)
	}
	close(ids)
	r.counts.reset()
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, c)
	// One LIST, as fleetd's lister makes per page.
	if err := storage.List(context.Background(), "fleet/pending/", func(store.Page) error { return nil }); err != nil {
		return 0, 0, err
	}
	for range c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := context.Background()
			for id := range ids {
				if err := rawSpec(ctx, storage, id, lease, meta, cell); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return 0, 0, err
	}
	elapsed := time.Since(start).Seconds()
	return float64(r.counts.total.Load()) / elapsed, float64(n) / elapsed, nil
}

// rawSpec is the claim protocol's happy path for one spec.
func rawSpec(ctx context.Context, s *store.Store, id string, lease []byte, meta map[string]string, cell func() error) error {
	key := func(state string) string { return "fleet/" + state + "/" + id + ".json" }
	o, err := s.Get(ctx, key("pending"), 1<<20)
	if err != nil {
		return err
	}
	tag, err := s.Put(ctx, key("leases"), lease, store.PutOptions{IfAbsent: true})
	if err != nil {
		return err
	}
	if _, err := s.Head(ctx, key("pending")); err != nil {
		return err
	}
	claimed, err := s.Put(ctx, key("claimed"), o.Body, store.PutOptions{Metadata: meta})
	if err != nil {
		return err
	}
	if err := s.Delete(ctx, key("pending"), o.ETag); err != nil {
		return err
	}
	if cell != nil {
		if err := cell(); err != nil {
			return err
		}
	}
	if _, err := s.Put(ctx, key("completed"), o.Body, store.PutOptions{Metadata: meta}); err != nil {
		return err
	}
	if err := s.Delete(ctx, key("claimed"), claimed); err != nil {
		return err
	}
	return s.Delete(ctx, key("leases"), tag)
}

// scaling is one row of scenario 3.
type scaling struct {
	N           int
	Specs       int
	SpecsPerSec float64
	Ideal       float64 // N / cell time: what the cells alone allow
	Efficiency  float64 // against Ideal
	ReqPerSpec  float64 // fleetd's, self-test excluded
	// ServerLimit is the specs/s the server allows for this request mix: its
	// raw request rate from N goroutines with fleetd's per-spec mix, divided
	// by fleetd's requests per spec. N cells of 0.1 s can ask for more
	// requests per second than a loopback versitygw on this machine answers.
	ServerLimit float64
	// MachineLimit is the specs/s this machine allows for the whole job
	// without fleetd: N goroutines making the same requests and starting the
	// same supervisor process per spec, on the same cores as the server.
	MachineLimit float64
	Reachable    float64   // min(Ideal, ServerLimit, MachineLimit)
	EffReach     float64   // the median of Trials
	Trials       []float64 // each pair's specs/s ÷ its own reachable
}

// scaling runs the fleetd run and the machine-limit run back to back, trials
// times: this machine's speed drifts between minutes by more than the margin
// measured here, and a pair shares its minute. The row holds the medians and
// each pair's efficiency vs reachable.
func (r *rig) scaling(n, trials int) (scaling, error) {
	row := scaling{N: n, Specs: 20 * n, Ideal: float64(n) / 0.1}
	specFile := filepath.Join(r.dir, "cell.json")
	if err := os.WriteFile(specFile, []byte(`{"spec":{"id":"raw","test":{"sleepMs":100}}}`), 0o600); err != nil {
		return row, err
	}
	var rates, reqs, limits []float64
	for i := range trials {
		rate, req, err := r.scalingRun(n, row.Specs)
		if err != nil {
			return row, err
		}
		if i == 0 {
			raw, err := r.rawRate(n, row.Specs)
			if err != nil {
				return row, err
			}
			row.ServerLimit = raw / req
		}
		_, limit, err := r.rawRun(n, row.Specs, func() error {
			return exec.Command(r.supervisor, specFile).Run()
		})
		if err != nil {
			return row, err
		}
		rates, reqs, limits = append(rates, rate), append(reqs, req), append(limits, limit)
		row.Trials = append(row.Trials, rate/min(row.Ideal, row.ServerLimit, limit))
	}
	row.SpecsPerSec, row.ReqPerSpec, row.MachineLimit = median(rates), median(reqs), median(limits)
	row.Efficiency = row.SpecsPerSec / row.Ideal
	row.Reachable = min(row.Ideal, row.ServerLimit, row.MachineLimit)
	row.EffReach = median(slices.Clone(row.Trials))
	return row, nil
}

// scalingRun is fleetd at concurrency n on specs cells of 100 ms: specs/s
// from its self-test passing, and requests per spec.
func (r *rig) scalingRun(n, specs int) (specsPerSec, reqPerSpec float64, err error) {
	bucket, err := r.newBucket()
	if err != nil {
		return 0, 0, err
	}
	if err := r.submit(bucket, specs, `{"sleepMs":100}`); err != nil {
		return 0, 0, err
	}
	r.counts.reset()
	a, err := r.startAgent(bucket, map[string]string{
		"CELLOS_FLEET_CONCURRENCY": fmt.Sprint(n), "CELLOS_FLEET_POLL_INTERVAL_MS": "1000",
		"CELLOS_FLEET_SUPERVISOR": r.supervisor,
	}, false)
	if err != nil {
		return 0, 0, err
	}
	werr := waitFinished(10*time.Minute, int64(specs), a)
	elapsed := time.Since(a.readyAt())
	reqPerSpec = float64(countWork(r.counts.ops())) / float64(specs)
	if _, err := a.stop(); err != nil || werr != nil {
		return 0, 0, errors.Join(werr, err)
	}
	return float64(specs) / elapsed.Seconds(), reqPerSpec, nil
}

// pickup is scenario 4.
type pickup struct {
	Specs         int
	PollMs        int
	P50, P99, Max time.Duration
}

// pickup submits n specs to an idle agent at random moments and measures the
// time from each PUT's completion to fleetd's "cell started" line.
func (r *rig) pickup(n int) (pickup, error) {
	res := pickup{Specs: n, PollMs: 1000}
	bucket, err := r.newBucket()
	if err != nil {
		return res, err
	}
	a, err := r.startAgent(bucket, map[string]string{"CELLOS_FLEET_POLL_INTERVAL_MS": fmt.Sprint(res.PollMs)}, true)
	if err != nil {
		return res, err
	}
	defer a.stop()
	storage := store.New(r.direct, bucket, store.Policy{})
	var lat []time.Duration
	// Moments drawn on a fixed timeline, one in each window of two poll
	// intervals: independent of when fleetd polls or last picked a spec up.
	window := 2 * time.Duration(res.PollMs) * time.Millisecond
	base := time.Now().Add(time.Second)
	for i := range n {
		at := base.Add(time.Duration(i)*window + time.Duration(rand.Int64N(int64(window))))
		time.Sleep(time.Until(at))
		id := fmt.Sprintf("pick-%03d", i)
		if _, err := storage.Put(context.Background(), "fleet/pending/"+id+".json", noopSpec(id, ""), store.PutOptions{}); err != nil {
			return res, err
		}
		put := time.Now()
		select {
		case started := <-a.cellStart:
			lat = append(lat, started.Sub(put))
		case <-time.After(30 * time.Second):
			return res, fmt.Errorf("spec %s not started within 30s", id)
		}
	}
	slices.Sort(lat)
	res.P50, res.P99, res.Max = pct(lat, 50), pct(lat, 99), lat[len(lat)-1]
	return res, nil
}

func pct(sorted []time.Duration, p int) time.Duration {
	i := (len(sorted)*p + 99) / 100
	return sorted[max(0, min(len(sorted)-1, i-1))]
}

// idle is scenario 5.
type idle struct {
	Seconds       float64
	CPUPercent    float64
	RSSMB         float64
	ReqsPerMinute float64
	PerMin        map[opArea]float64 // by operation and area
}

func (r *rig) idle(d time.Duration) (idle, error) { return r.idleWith(d, nil) }

// idleWith is idle with extra settings.
func (r *rig) idleWith(d time.Duration, settings map[string]string) (idle, error) {
	res := idle{Seconds: d.Seconds()}
	bucket, err := r.newBucket()
	if err != nil {
		return res, err
	}
	a, err := r.startAgent(bucket, settings, false) // default poll interval: 5 s
	if err != nil {
		return res, err
	}
	defer a.stop()
	time.Sleep(2 * time.Second) // past start-up
	s0, err := readProc(a.cmd.Process.Pid)
	if err != nil {
		return res, err
	}
	r.counts.reset()
	time.Sleep(d)
	s1, err := readProc(a.cmd.Process.Pid)
	if err != nil {
		return res, err
	}
	res.CPUPercent = 100 * (s1.cpu - s0.cpu).Seconds() / d.Seconds()
	res.RSSMB = float64(s1.rss) / (1 << 20)
	res.ReqsPerMinute = float64(r.counts.total.Load()) / d.Minutes()
	res.PerMin = map[opArea]float64{}
	for k, v := range r.counts.ops() {
		res.PerMin[k] = float64(v) / d.Minutes()
	}
	return res, nil
}

// backlog is one row of scenario 6.
type backlog struct {
	Pending     int
	FirstCellMs float64
	PeakRSSMB   float64
}

func (r *rig) backlog(n int, run time.Duration) (backlog, error) {
	row := backlog{Pending: n}
	bucket, err := r.newBucket()
	if err != nil {
		return row, err
	}
	if err := r.submit(bucket, n, ""); err != nil {
		return row, err
	}
	a, err := r.startAgent(bucket, map[string]string{"CELLOS_FLEET_CONCURRENCY": "16", "CELLOS_FLEET_POLL_INTERVAL_MS": "1000"}, true)
	if err != nil {
		return row, err
	}
	select {
	case t := <-a.cellStart:
		row.FirstCellMs = float64(t.Sub(a.started).Microseconds()) / 1000
	case <-time.After(time.Minute):
		a.stop()
		return row, errors.New("no cell started within a minute")
	}
	time.Sleep(run) // let it work through the backlog for a while
	st, err := a.stop()
	row.PeakRSSMB = float64(st.peakRSS) / (1 << 20)
	return row, err
}

// fleet is one row of scenario 7.
type fleet struct {
	Agents        int
	Specs         int
	SpecsPerSec   float64
	ReqPerSpec    float64
	ConflictsPer  float64 // 412 answers per spec
	WastedPerSpec float64 // requests per spec beyond the one-agent run's
	RunTwice      int     // specs whose supervisor started more than once
	NeverRun      int     // specs whose supervisor never started
	// MachineLimit is the specs/s this machine allows for the same job
	// without fleetd: 4 × agents goroutines making the same requests and
	// starting the same supervisor per spec, on the cores the server uses.
	MachineLimit float64
	ByOp         map[string]float64 // requests per spec by operation
	// CPU ms per spec while the agents ran: all fleetd processes together,
	// the server, and the harness (its proxy and the supervisors it waits on).
	FleetdCPU, ServerCPU, HarnessCPU float64
	// MachineBusy is the share of all cores' time busy while the agents ran,
	// MachineCPU the busy time per spec (every process: fleetd, the server,
	// the proxy, the supervisors); RawBusy and RawCPU the same for the
	// machine-limit run.
	MachineBusy, MachineCPU, RawBusy, RawCPU float64
	// ListServerMs and ListClientMs are the CPU one LIST of the full queue
	// costs the server and the harness (the SDK, the proxy), before it runs.
	ListServerMs, ListClientMs float64
}

// listCost lists bucket's pending/ n times, one page each as fleetd's lister
// asks for, and returns the server's and the harness's CPU per LIST.
func (r *rig) listCost(bucket string, n int) (serverMs, clientMs float64, err error) {
	storage := store.New(r.proxied, bucket, store.Policy{})
	s0, err := readProc(r.server.Pid())
	if err != nil {
		return 0, 0, err
	}
	c0 := selfCPU()
	for range n {
		if err := storage.List(context.Background(), "fleet/pending/", func(store.Page) error { return errStop }); err != nil && !errors.Is(err, errStop) {
			return 0, 0, err
		}
	}
	c1 := selfCPU()
	s1, err := readProc(r.server.Pid())
	if err != nil {
		return 0, 0, err
	}
	per := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / float64(n) }
	return per(s1.cpu - s0.cpu), per(c1 - c0), nil
}

// errStop ends a listing after its first page.
var errStop = errors.New("first page only")

func (r *rig) fleet(k, n int) (fleet, error) {
	row := fleet{Agents: k, Specs: n}
	bucket, err := r.newBucket()
	if err != nil {
		return row, err
	}
	if err := r.submit(bucket, n, ""); err != nil {
		return row, err
	}
	if row.ListServerMs, row.ListClientMs, err = r.listCost(bucket, 20); err != nil {
		return row, err
	}
	r.counts.reset()
	server0, err := readProc(r.server.Pid())
	if err != nil {
		return row, err
	}
	harness0 := selfCPU()
	meter, err := startMachineMeter()
	if err != nil {
		return row, err
	}
	// The test supervisor records each start: a spec run twice shows there,
	// whatever fleetd believes.
	events := filepath.Join(r.dir, fmt.Sprintf("%s-events", bucket))
	var agents []*agent
	for i := range k {
		a, err := r.startAgent(bucket, map[string]string{
			"CELLOS_FLEET_CONCURRENCY": "4", "CELLOS_FLEET_POLL_INTERVAL_MS": "1000",
			"CELLOS_FLEET_NODE_ID":    fmt.Sprintf("bench-%d", i),
			"CELLOS_FLEET_SUPERVISOR": r.supervisor, "FLEETD_TEST_EVENTS": events,
		}, false)
		if err != nil {
			return row, err
		}
		agents = append(agents, a)
	}
	werr := waitFinished(10*time.Minute, int64(n), agents...)
	start := agents[0].readyAt()
	for _, a := range agents[1:] {
		if t := a.readyAt(); t.Before(start) {
			start = t
		}
	}
	elapsed := time.Since(start)
	// The self-test (7 requests per agent at start-up) is not work.
	reqs, conflicts := countWork(r.counts.ops()), r.counts.preconditionFailed.Load()
	row.ByOp = perOp(r.counts.ops(), float64(n))
	server1, serr := readProc(r.server.Pid())
	harness1 := selfCPU()
	busy, busyCPU, merr := meter.stop()
	var fleetdCPU time.Duration
	for _, a := range agents {
		st, err := a.stop()
		if err == nil {
			fleetdCPU += st.cpu
		}
	}
	if err := errors.Join(serr, merr); err != nil {
		return row, err
	}
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / float64(n) }
	row.MachineBusy, row.MachineCPU = busy, ms(busyCPU)
	row.FleetdCPU, row.ServerCPU, row.HarnessCPU = ms(fleetdCPU), ms(server1.cpu-server0.cpu), ms(harness1-harness0)
	if werr != nil {
		return row, werr
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
	row.ConflictsPer = float64(conflicts) / float64(n)
	specFile := filepath.Join(r.dir, "noop.json")
	if err := os.WriteFile(specFile, []byte(`{"spec":{"id":"raw","test":{}}}`), 0o600); err != nil {
		return row, err
	}
	if meter, err = startMachineMeter(); err != nil {
		return row, err
	}
	_, row.MachineLimit, err = r.rawRun(4*k, n, func() error {
		return exec.Command(r.supervisor, specFile).Run()
	})
	if err != nil {
		return row, err
	}
	busy, busyCPU, err = meter.stop()
	row.RawBusy, row.RawCPU = busy, ms(busyCPU)
	return row, err
}

// baseline is scenario 8: the 0.5.1 way, one aws CLI process per S3 call.
type baseline struct {
	Specs       int
	Seconds     float64
	SpecsPerSec float64
	Skipped     string
}

func (r *rig) baseline(n int) (baseline, error) {
	res := baseline{Specs: n}
	awsCLI, err := exec.LookPath("aws")
	if err != nil {
		res.Skipped = "aws CLI not installed"
		return res, nil
	}
	bucket, err := r.newBucket()
	if err != nil {
		return res, err
	}
	if err := r.submit(bucket, n, ""); err != nil {
		return res, err
	}
	env := append(os.Environ(), "AWS_ACCESS_KEY_ID="+r.server.AccessKey, "AWS_SECRET_ACCESS_KEY="+r.server.SecretKey, "AWS_DEFAULT_REGION=us-east-1")
	aws := func(args ...string) ([]byte, error) {
		cmd := exec.Command(awsCLI, append([]string{"--endpoint-url", r.server.URL}, args...)...)
		cmd.Env = env
		out, err := cmd.Output()
		if err != nil {
			return nil, fmt.Errorf("aws %s: %w", strings.Join(args, " "), err)
		}
		return out, nil
	}
	tmp := filepath.Join(r.dir, "baseline-spec.json")
	s3url := func(state, name string) string { return "s3://" + bucket + "/fleet/" + state + "/" + name }
	start := time.Now()
	done := 0
	for done < n {
		out, err := aws("s3api", "list-objects-v2", "--bucket", bucket, "--prefix", "fleet/pending/", "--output", "json")
		if err != nil {
			return res, err
		}
		var listing struct{ Contents []struct{ Key string } }
		if err := json.Unmarshal(out, &listing); err != nil {
			return res, fmt.Errorf("parse listing: %w", err)
		}
		if len(listing.Contents) == 0 {
			break
		}
		for _, o := range listing.Contents {
			name := filepath.Base(o.Key)
			if _, err := aws("s3", "mv", s3url("pending", name), s3url("claimed", name)); err != nil {
				return res, err
			}
			if _, err := aws("s3", "cp", s3url("claimed", name), tmp); err != nil {
				return res, err
			}
			if err := exec.Command("/bin/true", tmp).Run(); err != nil {
				return res, err
			}
			if _, err := aws("s3", "mv", s3url("claimed", name), s3url("completed", name)); err != nil {
				return res, err
			}
			done++
		}
	}
	res.Seconds = time.Since(start).Seconds()
	res.SpecsPerSec = float64(done) / res.Seconds
	return res, nil
}
