package sim

import (
	"bytes"
	"fmt"
	"time"

	"github.com/cellos/fleetd/internal/store"
)

// The invariant, checked when the fleet has settled (checkFinal) and over the
// whole history (checkHistory). Each violation starts with its class:
//
//	stuck            something left in pending/, claimed/ or leases/
//	lost             a submitted spec with no result, and no prune took it
//	both-folders     completed/ and failed/ both hold one submission's bytes, not resubmitted (or requeued) between
//	bytes-changed    a result whose bytes are no submission's
//	blind-delete     a process deleted a version it never saw (recorded as it lands)
//	overlap          two runs of one spec making progress at once (a frozen cell makes none)
//	ran-twice        a run that exited and whose result landed, run again with no new submission
//	filed-and-ran    cancelled or rejected, then run with no new submission
//	cancel-ignored   a confirmed cancel, then a run not stopped, with no new submission
//	requeue-forgotten a confirmed requeue that never led to a result
//	early            a delayed spec (a retry, submit --in) made pending over a second before its due time
//	schedule-twice   a schedule's due time written to pending/ twice

func (s *scenario) checkFinal() {
	h := s.hist
	for _, k := range s.stuck() {
		h.violatef("stuck: %s left behind after the fleet had %v to settle", k, 120*time.Second)
	}
	results := map[store.Area]map[string]int64{}
	bodies := map[store.Area]map[string][]byte{}
	for _, st := range []store.Area{store.Completed, store.Failed} {
		results[st], bodies[st] = map[string]int64{}, map[string][]byte{}
		for _, l := range h.lanes {
			for _, o := range s.store.Snapshot(l.Dir(st)) {
				if id, ok := l.ID(st, o.Key); ok {
					results[st][id], bodies[st][id] = o.Version, o.Body
				}
			}
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	submitted := map[string][][]byte{}
	var ids []string
	for _, w := range h.writes {
		if (w.state == store.Pending || w.state == stateDelayed) && w.by.role == "submit" {
			if submitted[w.id] == nil {
				ids = append(ids, w.id)
			}
			submitted[w.id] = append(submitted[w.id], w.body)
		}
	}
	for _, id := range ids {
		c, inC := results[store.Completed][id]
		f, inF := results[store.Failed][id]
		switch {
		case !inC && !inF:
			pruned := false
			for _, d := range h.deletes {
				if d.id == id && d.by.role == "prune" {
					pruned = true
				}
			}
			if !pruned {
				h.violatef0("lost: %s was submitted and has no result (no prune deleted one)", id)
			}
		case inC && inF:
			// Two submissions may each end in a folder of their own; one
			// submission's bytes in both is one spec with two ends, unless
			// the same bytes were submitted again between the two results.
			cw, fw := h.writeOf(c), h.writeOf(f)
			first, last := cw, fw
			if fw.t.Before(cw.t) {
				first, last = fw, cw
			}
			// A requeue puts the bytes back in pending/: a submission too.
			if cw.n == fw.n && !h.submittedBetween(id, first.t, last.t) && h.chainsEnded(id, cw.n, h.landing(last).t) {
				h.violatef0("both-folders: %s n=%d is in completed/ (%s) and failed/ (%s, %s), with no submission of it between the two",
					id, cw.n, fmtVer(c), fmtVer(f), fw.outcome)
			}
		}
		for _, st := range []store.Area{store.Completed, store.Failed} {
			b, ok := bodies[st][id]
			if !ok {
				continue
			}
			same := false
			for _, sb := range submitted[id] {
				same = same || bytes.Equal(sb, b)
			}
			if !same {
				h.violatef0("bytes-changed: %s/%s holds bytes no submission had", st, id)
			}
		}
	}
}

// violatef0 is violatef with h.mu held.
func (h *history) violatef0(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	h.violations = append(h.violations, msg)
	h.trace = append(h.trace, traceLine{time.Now(), "CHECK", "VIOLATION: %s", []any{msg}})
}

// writeOf returns the write that made version v. h.mu is held.
func (h *history) writeOf(v int64) writeRec {
	for _, w := range h.writes {
		if w.version == v {
			return w
		}
	}
	return writeRec{}
}

// filedBefore reports whether the last write of d's id by d's process
// before d filed it cancelled: d is then a cancel's delete, not a promotion.
// h.mu is held.
func (h *history) filedBefore(d deleteRec) bool {
	var last writeRec
	for _, w := range h.writes {
		if w.id == d.id && w.by == d.by && !w.t.After(d.t) {
			last = w
		}
	}
	return last.state == store.Failed && last.outcome == "cancelled"
}

// landing returns the first write of the result that w repeats: a result
// retried after a lost answer lands twice, and was in its folder from the
// first landing on. h.mu is held.
func (h *history) landing(w writeRec) writeRec {
	first := w
	for i := len(h.writes) - 1; i >= 0; i-- {
		x := h.writes[i]
		if x.id != w.id || x.by != w.by || !x.t.Before(first.t) {
			continue
		}
		if x.state != w.state || x.n != w.n {
			break
		}
		first = x
	}
	return first
}

// submittedBetween reports whether an operator put id in pending/ (a
// submission or a requeue) in (from, to). h.mu is held.
func (h *history) submittedBetween(id string, from, to time.Time) bool {
	for _, w := range h.writes {
		if w.id == id && (w.state == store.Pending || w.state == stateDelayed && w.by.role == "submit") && (w.by.role == "submit" || w.by.role == "requeue") &&
			w.t.After(from) && w.t.Before(to) {
			return true
		}
	}
	return false
}

func (s *scenario) checkHistory() {
	h := s.hist
	h.mu.Lock()
	defer h.mu.Unlock()
	now := time.Now()
	for i, a := range h.runs {
		for _, b := range h.runs[i+1:] {
			if a.id != b.id {
				continue
			}
			if b.start.Before(a.start) {
				a, b = b, a
			}
			if at, ok := bothProgress(a, b, now); ok {
				h.violatef0("overlap: %s ran on %s from %v and on %s from %v, both making progress at %v", a.id, a.inc, h.at(a.start), b.inc, h.at(b.start), h.at(at))
				continue
			}
			// A run of a spec retried fewer times than a is no rerun of a:
			// it descends from another submission of the same bytes, whose
			// retries run beside a's (a spec's retries only grow).
			if a.n == b.n && a.how == "exit" && h.resultBy(a.inc, a.id, a.end, b.start) && !h.submittedBetween(a.id, a.start, b.start) &&
				h.chainsEnded(a.id, a.n, b.start) {
				h.violatef0("ran-twice: %s n=%d exited on %s at %v and its result landed, then ran again on %s at %v with no new submission",
					a.id, a.n, a.inc, h.at(a.end), b.inc, h.at(b.start))
			}
		}
	}
	schedWrites := map[string]int{}
	for _, w := range h.writes {
		if w.sched && w.state == store.Pending {
			schedWrites[w.id]++
			if schedWrites[w.id] == 2 {
				h.violatef0("schedule-twice: %s was written to pending/ twice (the second at %v by %s)", w.id, h.at(w.t), w.by.name)
			}
		}
	}
	for _, d := range h.deletes {
		// A delayed spec is promoted only when due, by the promoter's clock
		// and not over a second early by the store's (a cancel files it at
		// once: a tool's delete, or a node's that files it cancelled).
		if _, due, err := h.layout.ParseDelayed(d.key); err == nil && d.by.role == "node" && d.t.Before(due.Add(-time.Second)) &&
			!h.filedBefore(d) {
			h.violatef0("early: %s promoted at %v, due at %v", d.key, h.at(d.t), h.at(due))
		}
	}
	for _, w := range h.writes {
		if w.state != store.Failed || w.outcome != "cancelled" && w.outcome != "rejected" {
			continue
		}
		for _, r := range h.runs {
			if r.id == w.id && r.n == w.n && r.start.After(w.t) && !h.submittedBetween(w.id, w.t, r.start) && h.chainsEnded(w.id, w.n, r.start) {
				h.violatef0("filed-and-ran: %s n=%d was filed %s at %v by %s, then ran on %s at %v with no new submission",
					w.id, w.n, w.outcome, h.at(w.t), w.by.name, r.inc, h.at(r.start))
				break
			}
		}
	}
	for _, a := range h.actions {
		if !a.done {
			continue
		}
		switch a.kind {
		case "cancel":
			for _, r := range h.runs {
				// A holder may start the cell before it reads the mark; the
				// mark must stop it.
				if r.id == a.id && r.start.After(a.end) && r.how != "stopped" && r.how != "crash" && !h.submittedBetween(a.id, a.start, r.start) {
					h.violatef0("cancel-ignored: cancel of %s confirmed (%s) at %v, then it ran on %s at %v with no new submission",
						a.id, a.result, h.at(a.end), r.inc, h.at(r.start))
					break
				}
			}
		case "requeue":
			found := false
			for _, w := range h.writes {
				found = found || w.id == a.id && (w.state == store.Completed || w.state == store.Failed) && w.t.After(a.start)
			}
			if !found {
				h.violatef0("requeue-forgotten: requeue of %s confirmed at %v, and no result was written after it", a.id, h.at(a.end))
			}
		}
	}
}

// bothProgress returns an instant at which runs a and b both made progress,
// if there is one; a run still going counts until until.
func bothProgress(a, b *runRec, until time.Time) (time.Time, bool) {
	for _, x := range a.progress(until) {
		for _, y := range b.progress(until) {
			from := x.from
			if y.from.After(from) {
				from = y.from
			}
			to := x.to
			if y.to.Before(to) {
				to = y.to
			}
			if from.Before(to) {
				return from, true
			}
		}
	}
	return time.Time{}, false
}

// chainsEnded reports whether, by t, every submission of id's bytes n had
// ended in a result. Without retries or delayed specs one submission is one
// run, and a run after another's result with no submission between is a
// rerun: the rules above stand as they are. With them, a submission is a
// chain of runs, or waits under pending/.delayed/ while another submission of
// the same bytes runs: a run (or a second result) is one too many only when
// as many results as submissions had landed. h.mu is held.
func (h *history) chainsEnded(id string, n int, t time.Time) bool {
	delayed := false
	for _, w := range h.writes {
		delayed = delayed || w.id == id && w.state == stateDelayed && w.t.Before(t)
	}
	if !delayed {
		return true
	}
	type call struct {
		by  *Handle
		req int64
	}
	// A submission is counted per version that landed: a plain PUT (no
	// lease, no condition) retried after a lost answer can land twice, and
	// each landing is a copy that runs. A chain ends with a run that exited
	// and whose result its node wrote (not a retry), or with a filing
	// (cancelled, rejected, abandoned): counted per write call.
	subs, filings := map[int64]bool{}, map[call]bool{}
	ended := 0
	prev := map[*Handle]writeRec{} // each process's last write of id
	for _, w := range h.writes {
		if w.id != id || !w.t.Before(t) {
			continue
		}
		last := prev[w.by]
		prev[w.by] = w
		if w.n != n {
			continue
		}
		switch {
		case (w.state == store.Pending || w.state == stateDelayed) && (w.by.role == "submit" || w.by.role == "requeue"):
			subs[w.version] = true
		case w.state == store.Failed && (w.outcome == "cancelled" || w.outcome == "rejected" || w.outcome == "abandoned"):
			filings[call{w.by, w.req}] = true
			// A filing written again (its first answer lost, the
			// protocol's step repeated) ends one chain, not two.
			if last.state != w.state || last.outcome != w.outcome || last.n != w.n {
				ended++
			}
		}
	}
	counted := map[call]bool{} // a result ends one chain, not every run before it on its node
	for _, r := range h.runs {
		if r.id != id || r.n != n || r.how != "exit" || !r.end.Before(t) {
			continue
		}
		// The run's own result: its node's first write of id and these
		// bytes after it (a cancelled delayed copy of other bytes, filed
		// on the way, is not), a result that is not a filing (counted
		// above).
		for _, w := range h.writes {
			if w.id != id || w.n != n || w.by.name != r.inc || w.t.Before(r.end) || !w.t.Before(t) {
				continue
			}
			if (w.state == store.Completed || w.state == store.Failed) && !filings[call{w.by, w.req}] && !counted[call{w.by, w.req}] {
				counted[call{w.by, w.req}] = true
				ended++
			}
			if w.state == store.Completed || w.state == store.Failed || w.state == stateDelayed {
				break
			}
		}
	}
	return ended >= len(subs)
}

// resultBy reports whether inc landed a result of id in [from, to), the
// first of its writes of id there: one whose first write is a retry (the spec
// under pending/.delayed/) returned the run to be retried. h.mu is held.
func (h *history) resultBy(inc, id string, from, to time.Time) bool {
	for _, w := range h.writes {
		if w.id != id || w.by.name != inc || w.t.Before(from) || !w.t.Before(to) {
			continue
		}
		switch w.state {
		case store.Completed, store.Failed:
			return true
		case stateDelayed:
			return false
		}
	}
	return false
}

func (h *history) at(t time.Time) string {
	return t.Sub(h.t0).Round(time.Millisecond).String()
}
