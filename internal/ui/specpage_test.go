package ui

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

// hostileOutput is what a cell may print: markup that must stay text.
const hostileOutput = "ok\n</pre><script>window.pwned=3</script><img src=x onerror=\"window.pwned=4\">\n"

func outputMeta(token, node, attempt, exit string, truncated bool) map[string]string {
	t := "false"
	if truncated {
		t = "true"
	}
	return map[string]string{"fleetd-token": token, "fleetd-node": node, "fleetd-attempts": attempt, "fleetd-exit": exit, "fleetd-truncated": t}
}

func TestSpecPageShowsTheRecordsAndTheOutput(t *testing.T) {
	f := queueFixture()
	meta := failure("node-<i>x</i>", "<script>alert(1)</script>", "7")
	meta["fleetd-token"], meta["fleetd-started"] = "tok1", now.Add(-2*time.Minute).Format(time.RFC3339Nano)
	meta["fleetd-retried"], meta["fleetd-reasons"] = "1", "supervisor exit 3 | <b>timeout</b>"
	f.put("fleet/failed/"+hostileID+".json", object{body: []byte(`{"x":"</pre><script>window.pwned=2</script>"}`), age: 2 * time.Hour, meta: meta})
	f.put("fleet/output/"+hostileID+".txt", object{body: []byte(hostileOutput), age: 2 * time.Hour, meta: outputMeta("tok1", "node-<i>x</i>", "2", "7", true)})
	h := setup(t, f, nil)

	code, page := h.get("/spec?id=" + url.QueryEscape(hostileID))
	if code != http.StatusOK {
		t.Fatalf("spec page = %d\n%s", code, page)
	}
	for _, bad := range []string{"<script>", "<img", "<i>x", "<b>timeout"} {
		if strings.Contains(page, bad) {
			t.Errorf("the page holds %q unescaped", bad)
		}
	}
	for _, want := range []string{
		`<span id="spec-id">&lt;script&gt;window.pwned=1</span>`,
		`id="rec-reason" class="reason">&lt;script&gt;alert(1)&lt;/script&gt;</td>`,
		`id="rec-node">node-&lt;i&gt;x&lt;/i&gt;</td>`,
		`id="rec-attempts">2, 1 failed runs retried</td>`,
		`<li class="reason">supervisor exit 3</li><li class="reason">&lt;b&gt;timeout&lt;/b&gt;</li>`,
		`id="rec-exit">7</td>`,
		`id="rec-duration">1m0s</td>`,
		`id="rec-finished">2025-06-01 11:59:00Z</td>`,
		`<pre id="output">ok` + "\n" + `&lt;/pre&gt;&lt;script&gt;window.pwned=3&lt;/script&gt;&lt;img src=x onerror=&#34;window.pwned=4&#34;&gt;`,
		`, the end of a longer output`,
		`<pre id="spec-body">{&#34;x&#34;:&#34;&lt;/pre&gt;&lt;script&gt;window.pwned=2&lt;/script&gt;&#34;}</pre>`,
	} {
		if !strings.Contains(page, want) {
			t.Errorf("the page lacks %s", want)
		}
	}
	if strings.Contains(page, "From another run") {
		t.Error("the output of the result's own run is called another run's")
	}

	// An output from an earlier run (its token is not the result's) says so.
	f.put("fleet/output/f-old.txt", object{body: []byte("old run\n"), meta: outputMeta("other", "n", "1", "3", false)})
	if _, page := h.get("/spec?id=f-old"); !strings.Contains(page, "From another run than the result") || !strings.Contains(page, `<pre id="output">old run`) {
		t.Errorf("an earlier run's output is not marked:\n%s", page)
	}
	// No output.
	if _, page := h.get("/spec?id=f-new"); !strings.Contains(page, `id="no-output"`) {
		t.Error("a spec without output does not say so")
	}
}

func TestSpecPageInFlightAndPending(t *testing.T) {
	h := setup(t, queueFixture(), nil)
	code, page := h.get("/spec?id=run-b")
	if code != http.StatusOK || !strings.Contains(page, `id="rec-lease">running, held by node-b, attempt 2`) ||
		!strings.Contains(page, `id="rec-claimed">`) || !strings.Contains(page, `id="spec-states"><a href="/spec?state=claimed&amp;id=run-b">claimed/</a>; leased`) {
		t.Errorf("in-flight spec page = %d\n%s", code, page)
	}
	if _, page := h.get("/spec?id=p1"); !strings.Contains(page, `id="rec-submitted">`) || strings.Contains(page, `id="rec-outcome"`) {
		t.Errorf("pending spec page:\n%s", page)
	}
	if code, _ := h.get("/spec?id=nobody"); code != http.StatusNotFound {
		t.Errorf("a spec in no state = %d, want 404", code)
	}
	if code, _ := h.get("/spec?id=p1&state=failed"); code != http.StatusNotFound {
		t.Errorf("a state the spec is not in = %d, want 404", code)
	}
}

func TestSpecPageOutputIsCapped(t *testing.T) {
	f := queueFixture()
	f.put("fleet/output/f-new.txt", object{body: []byte(strings.Repeat("y", 100)), meta: outputMeta("t", "n", "1", "0", false)})
	h := setup(t, f, func(c *Config) { c.OutputLimit = 50 })
	if _, page := h.get("/spec?id=f-new"); strings.Contains(page, "yyyyy") || !strings.Contains(page, "100 bytes: too large to show here (fleetd logs)") {
		t.Errorf("a 100-byte output over a 50-byte cap:\n%s", page)
	}
}
