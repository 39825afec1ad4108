package main

import (
	"time"
)

// AWS S3 Standard list prices, us-east-1, per 1,000 requests, as quoted in
// issue 12: PUT, COPY, POST and LIST $0.005; GET, HEAD and the rest $0.0004;
// DELETE free.
var pricePer1000 = map[string]float64{"PUT": 0.005, "COPY": 0.005, "POST": 0.005, "LIST": 0.005, "GET": 0.0004, "HEAD": 0.0004, "DELETE": 0,
	"LISTV": 0.005, "DELETEV": 0.005} // ListObjectVersions is a LIST, DeleteObjects a POST

const minutesPerMonth = 30 * 24 * 60

// dollars prices a count of requests by operation.
func dollars(byOp map[string]float64) float64 {
	var d float64
	for op, n := range byOp {
		price, ok := pricePer1000[op]
		if !ok {
			price = pricePer1000["GET"]
		}
		d += n * price / 1000
	}
	return d
}

// costSections writes the sections of issue 12: requests by operation, the
// dead node, recovery against fleet size, latency, and dollars.
func (rep *report) costSections(p func(string, ...any)) {
	if len(rep.throughput) > 0 {
		p("## 9. Requests per spec by operation\n\nFrom the throughput runs (scenario 1), counted at the proxy, self-test excluded. The happy path of the protocol is 8 requests: GET pending, PUT lease, HEAD pending, PUT claimed, DELETE pending, PUT result, DELETE claimed, DELETE lease, and a PUT of output/ before the result with output kept (the default; section 16): 9; the rest is the LIST share (and a lease renewal when a claim runs long).\n\n")
		p("| concurrency |")
		for _, op := range billedOps {
			p(" %s |", op)
		}
		p(" total |\n|---|---|---|---|---|---|---|---|\n")
		for _, r := range rep.throughput {
			p("| %d |", r.Concurrency)
			for _, op := range billedOps {
				p(" %.2f |", r.ByOp[op])
			}
			p(" %.2f |\n", sum(r.ByOp))
		}
		p("\n")
	}
	if len(rep.dead) > 0 {
		ttl := rep.dead[0].TTL
		p("## 10. Dead node: time until its spec runs elsewhere\n\n4 agents, ttl %v (short, to keep the run short; poll interval 1 s, scaled with it like the defaults' 5 s against 60 s). One spec, a cell longer than the trial; the agent running it is killed with SIGKILL %v into the cell; time from the kill to another agent's `cell started`. Expected: the lease goes stale ttl + 1 s after its last renewal (at most ttl/3 before the kill), then the next recovery scan (one per ttl/2 for the fleet, offered by each agent about once a ttl) returns the spec and the next poll picks it up.\n\n", ttl, ttl/2)
		p("| trial | recovery | ÷ ttl |\n|---|---|---|\n")
		for i, d := range rep.dead {
			p("| %d | %v | %.2f |\n", i+1, d.Recovery.Round(100*time.Millisecond), d.Recovery.Seconds()/d.TTL.Seconds())
		}
		p("\n")
	}
	if len(rep.recovery) > 0 {
		x := rep.recovery[0]
		p("## 11. Recovery cost against fleet size\n\nIdle agents, ttl %v (short, so a minute holds many recovery periods; everything here scales with 1/ttl), default poll interval; the fleet's requests per minute, counted at the proxy by prefix. One scan (LIST leases/, and LIST claimed/ on the first scan in each period of three ttls) is allowed per 0.8 ttl for the whole fleet: an agent offers about once a ttl and takes the turn by moving `recovery/scan.json` forward with a compare-and-swap (PUT If-Match), which one agent wins; the last winner swaps at once at its next offer, any other HEADs the marker first. A lone agent offers once a ttl, so it scans once a ttl; a fleet scans about once per 0.8 ttl whatever its size. The turn-taking itself costs each agent about one request per ttl.\n\n", x.TTL)
		p("| agents | LIST claimed/ /min | LIST leases/ /min | recovery LISTs /min | turn PUT+HEAD /min | LIST pending/ /min |\n|---|---|---|---|---|---|\n")
		for _, r := range rep.recovery {
			c, l := r.recoveryLists()
			turn := r.PerMin[opArea{"PUT", "recovery"}] + r.PerMin[opArea{"HEAD", "recovery"}]
			p("| %d | %.1f | %.1f | %.1f | %.1f | %.1f |\n", r.Agents, c, l, c+l, turn, r.PerMin[opArea{"LIST", "pending"}])
		}
		p("\n")
	}
	if len(rep.latency) > 0 {
		p("## 12. Latency: every request delayed by 20 ms\n\nThe proxy holds every request %v before passing it on, as a store in the same region would (S3: 10–50 ms). One agent, no-op specs (25 per unit of concurrency). Per spec, medians: *seen → started* from fleetd's GET of the spec to its `cell started` log line; *exited → durable* from `cell ended` to the answer of the result PUT; *durable → done* from there to the claim's last DELETE answered. Round trips = time ÷ the median request time at the proxy. *-compare build* is the binary given with `-compare` (for the committed run: the build before commit 4262041, whose worker held its slot until both deletes were answered); *this build* is the tree measured.\n\n", rep.opts.latencyDelay)
		p("| build | concurrency | specs/s | median request ms | seen → started ms (RTs) | exited → durable ms (RTs) | durable → done ms (RTs) |\n|---|---|---|---|---|---|---|\n")
		for _, r := range rep.latency {
			p("| %s | %d | %.1f | %.1f | %.0f (%.1f) | %.0f (%.1f) | %.0f (%.1f) |\n", r.Build, r.Concurrency, r.SpecsPerSec, r.ReqMs,
				r.SeenToStart, r.RTs(r.SeenToStart), r.ExitToDurable, r.RTs(r.ExitToDurable), r.DurableToDone, r.RTs(r.DurableToDone))
		}
		p("\n")
		p("Seen → started is five round trips in a row: GET pending, PUT lease (create-only), HEAD pending (confirm), PUT claimed, DELETE pending (If-Match). Exited → durable is one, the result PUT. Durable → done is two: DELETE claimed, then DELETE lease; they go on beside the next spec, under the still-held lease (the drain waits for them), so the worker slot is held for six round trips, not eight: specs/s ≈ concurrency ÷ (6 round trips + the cell) until the server or the CPU binds.\n\n")
		p("Two cuts were examined and **not made**, because each opens a window in the invariant: (1) the HEAD confirm beside the PUT of claimed/: when the HEAD finds pending/ gone (another node finished the spec between our GET and our lease), we hold a claimed/ of our own for a spec already finished; if its delete never lands — the node dies, or an outage outlasts the ttl — recovery finds our lease stale, pending/ gone, claimed/ present and no result under our token, and returns the spec to pending/: a finished spec runs again, and may end in both completed/ and failed/. With the HEAD first, that claimed/ is never written. (2) The DELETE of claimed/ beside the DELETE of the lease: claimed/'s ETag is the spec's MD5, the same for a resubmission of the same bytes, so only the lease makes that delete ours; a delete that lands late or is retried after the lease is gone can remove the claimed/ of a new claim of a resubmission, which recovery then cannot return if that node dies.\n\n")
	}
	rep.dollars(p)
}

// dollars writes the cost table at AWS list prices.
func (rep *report) dollars(p func(string, ...any)) {
	if rep.idle == nil && len(rep.throughput) == 0 {
		return
	}
	p("## 13. What it costs at AWS list prices\n\nAWS S3 Standard list prices for us-east-1 as quoted in issue 12 (PUT, COPY, POST, LIST $0.005 per 1,000; GET, HEAD $0.0004 per 1,000; DELETE free), applied on %s to the counts of this run. A month is 30 days.\n\n", rep.started.UTC().Format("2006-01-02"))
	if len(rep.throughput) > 0 {
		r := rep.throughput[0]
		p("Per 1,000 specs (no-op, concurrency %d, LIST share included):\n\n| class | requests | $ |\n|---|---|---|\n", r.Concurrency)
		classes := []struct {
			name string
			ops  []string
		}{{"PUT, COPY, LIST", []string{"PUT", "COPY", "LIST"}}, {"GET, HEAD", []string{"GET", "HEAD"}}, {"DELETE", []string{"DELETE"}}}
		for _, c := range classes {
			m := map[string]float64{}
			for _, op := range c.ops {
				m[op] = 1000 * r.ByOp[op]
			}
			p("| %s | %.0f | %.4f |\n", c.name, sum(m), dollars(m))
		}
		all := map[string]float64{}
		for op, n := range r.ByOp {
			all[op] = 1000 * n
		}
		p("| all | %.0f | %.4f |\n\n", sum(all), dollars(all))
	}
	if x := rep.idle; x != nil {
		month := map[string]float64{}
		scans := map[string]float64{} // the agent's recovery LISTs, shared by a fleet
		for k, v := range x.PerMin {
			month[k.Op] += v * minutesPerMonth
			if k.Op == "LIST" && (k.Area == "leases" || k.Area == "claimed") {
				scans["LIST"] += v * minutesPerMonth
			}
		}
		// Before: issue 12's measurement of the old defaults, one LIST of
		// pending/ and two recovery LISTs per 5 s poll on every agent.
		before := map[string]float64{"LIST": 3 * 12 * minutesPerMonth}
		p("Idle, default settings (poll 5 s, ttl 60 s). *Before*: the old defaults as issue 12 describes them (3 LISTs per 5 s poll per agent: 36/min; the issue measured 34–43). *Now*: this run's idle agent. A fleet of 100 idle agents: before, 100 times one agent; now, 100 times one agent's own requests plus one fleet's recovery scans (at most one per ttl/2, scenario 11: a lone agent's scan share is its own, so this counts the scans of two).\n\n")
		p("| | requests/min per agent | $ per idle agent-month | $ per month, 100 idle agents |\n|---|---|---|---|\n")
		p("| before | %.1f | %.2f | %.2f |\n", sum(before)/minutesPerMonth, dollars(before), 100*dollars(before))
		own := map[string]float64{}
		for op, n := range month {
			own[op] = n - scans[op]
		}
		// Two agents or more fill every ttl/2 slot: twice a lone agent's scans.
		fleet := 100*dollars(own) + 2*dollars(scans)
		p("| now | %.1f | %.2f | %.2f |\n\n", x.ReqsPerMinute, dollars(month), fleet)
	}
}
