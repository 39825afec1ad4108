package e2e

// fleetd ui's spec page and chart in a real browser, on specs the daemon ran:
// the 3 MiB output with a secret shows as its last MiB, redacted; a hostile
// id with hostile output renders as text.

import (
	"net/url"
	"strings"
	"syscall"
	"testing"

	"github.com/chromedp/chromedp"
)

// hostileOutput is what a cell may print: markup that must stay text.
const hostileOutput = `</pre><script>window.pwned=3</script><img src=x onerror="window.pwned=4">`

func TestUISpecPageShowsTheOutput(t *testing.T) {
	t.Parallel()
	ctx := browser(t)
	secret := serverSecret(t)
	b := newBucket(t)
	b.submit("loud", map[string]any{"exit": 3,
		"bulk": map[string]any{"bytes": 3 << 20, "secretEnv": "AWS_SECRET_ACCESS_KEY", "secretAt": []float64{0.5, 0.9}}})
	b.submit(hostileID, map[string]any{"exit": 4, "print": hostileOutput})
	b.submit("fine", map[string]any{})
	a := startAgent(t, b, map[string]string{"CELLOS_FLEET_CONCURRENCY": "3"})
	b.waitCount("failed", 2)
	b.waitCount("completed", 1)
	ui := startUI(t, b)

	do(t, ctx, chromedp.Steps(chromedp.Navigate(ui+"spec?id=loud"), chromedp.WaitVisible(chromedp.CSS("#output"))))
	if n := js[int](t, ctx, `document.getElementById("output").textContent.length`); n != 1<<20 {
		t.Errorf("the output shows %d characters, want the last MiB (%d)", n, 1<<20)
	}
	if js[bool](t, ctx, `document.body.textContent.includes(`+jsString(secret)+`)`) {
		t.Error("the spec page shows the secret")
	}
	if n := js[int](t, ctx, `document.getElementById("output").textContent.split("secret=[REDACTED] ").length - 1`); n != 1 {
		t.Errorf("%d redacted secrets in the output shown, want 1", n)
	}
	if reason := js[string](t, ctx, `document.getElementById("rec-reason").textContent`); reason != "supervisor exit 3" {
		t.Errorf("reason %q, want the record's %q", reason, "supervisor exit 3")
	}
	if exit := js[string](t, ctx, `document.getElementById("rec-exit").textContent`); exit != "3" {
		t.Errorf("exit %q", exit)
	}

	do(t, ctx, chromedp.Steps(chromedp.Navigate(ui+"spec?id="+url.QueryEscape(hostileID)), chromedp.WaitVisible(chromedp.CSS("#output"))))
	if id := js[string](t, ctx, `document.getElementById("spec-id").textContent`); id != hostileID {
		t.Errorf("spec id shown %q, want %q", id, hostileID)
	}
	if out := js[string](t, ctx, `document.getElementById("output").textContent`); !strings.Contains(out, hostileOutput) {
		t.Errorf("output shown %q, want the markup as text", out)
	}
	if js[int](t, ctx, `document.scripts.length`) != 0 || js[int](t, ctx, `document.images.length`) != 0 || js[bool](t, ctx, `window.pwned !== undefined`) {
		t.Error("the hostile output became markup")
	}

	// The front page's chart counts what finished: 1 completed, 2 failed.
	do(t, ctx, chromedp.Steps(chromedp.Navigate(ui), chromedp.WaitVisible(chromedp.CSS("#chart-hour"))))
	if n := js[int](t, ctx, `document.querySelectorAll("#chart-hour g.bar").length`); n != 60 {
		t.Errorf("%d bars in the hour's chart, want 60", n)
	}
	sum := func(attr string) int {
		return js[int](t, ctx, `Array.from(document.querySelectorAll("#chart-hour g.bar")).reduce((s, g) => s + Number(g.dataset.`+attr+`), 0)`)
	}
	if c, f := sum("completed"), sum("failed"); c != 1 || f != 2 {
		t.Errorf("the hour's chart: %d completed, %d failed; want 1 and 2", c, f)
	}
	a.signal(syscall.SIGTERM)
	if code := a.wait(); code != 0 {
		t.Errorf("fleetd exited %d", code)
	}
}

// jsString quotes s as a JavaScript string literal.
func jsString(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)
	return `"` + r.Replace(s) + `"`
}
