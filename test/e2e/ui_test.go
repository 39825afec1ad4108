package e2e

// fleetd ui in a real browser: headless Chromium (Debian's chromium package)
// driven by chromedp, against the real binary on versitygw, on a queue made by
// running the daemon.

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// browser starts a headless Chromium for one test. Without Chromium the test
// is skipped, unless CI is set: there it must run.
func browser(t *testing.T) context.Context {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("chromium is not installed (CI is set, so the browser tests must run): %v", err)
		}
		t.Skip("chromium is not installed (apt-get install chromium); skipping the browser tests")
	}
	// The machine's network is closed: without these flags Chromium keeps
	// reaching for Google's services and floods the log with refused connections.
	alloc, cancel := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(path),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 1000),
	)
	t.Cleanup(cancel)
	ctx, cancelCtx := chromedp.NewContext(alloc)
	t.Cleanup(cancelCtx)
	// The first Run starts the browser; it lives as long as ctx.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return ctx
}

// do runs browser actions with a bound.
func do[T any](t *testing.T, ctx context.Context, a chromedp.Action[T]) T {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		t.Fatalf("browser: %v", err)
	}
	return v
}

// js evaluates a JavaScript expression in the page.
func js[T any](t *testing.T, ctx context.Context, expr string) T {
	t.Helper()
	return do(t, ctx, chromedp.Evaluate[T](expr, chromedp.EvalAwaitPromise))
}

// startUI runs `fleetd ui` on bucket b and returns its URL.
func startUI(t *testing.T, b *bucket, args ...string) string {
	t.Helper()
	return startUIWith(t, b, nil, args...)
}

// startUIWith is startUI with more environment variables (KEY=value).
func startUIWith(t *testing.T, b *bucket, vars []string, args ...string) string {
	t.Helper()
	cmd := exec.Command(env.fleetd, append([]string{"ui", "--listen", "127.0.0.1:0"}, args...)...)
	cmd.Env = append(os.Environ(), env.server.Env()...)
	cmd.Env = append(cmd.Env, "CELLOS_FLEET_BUCKET="+b.name, "CELLOS_FLEET_NODE_ID=ui-host", "CELLOS_FLEET_LEASE_TTL_MS=3000")
	cmd.Env = append(cmd.Env, vars...)
	logs := newLogWatch()
	cmd.Stderr, cmd.Stdout = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatalf("start fleetd ui: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); logs.close(); close(exited) }()
	t.Cleanup(func() {
		// SIGTERM ends it cleanly: exit 0.
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
			if code := cmd.ProcessState.ExitCode(); code != 0 {
				t.Errorf("fleetd ui exited %d after SIGTERM\n%s", code, logs.text())
			}
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			t.Errorf("fleetd ui did not stop on SIGTERM")
		}
		if t.Failed() {
			t.Logf("fleetd ui log:\n%s", logs.text())
		}
	})
	logs.awaitEvent(t, "ui.listening", 1)
	url, _ := logs.events("ui.listening")[0]["url"].(string)
	if url == "" {
		t.Fatalf("no url in the listening line:\n%s", logs.text())
	}
	return url
}

// hostileID is a spec id that is markup: it must show as text.
const hostileID = `<script>window.pwned=1`

// uiQueue makes a queue by running the daemon: two completed, two failed
// (one with the hostile id), one running until released, and one pending for
// another pool. It returns the agent and the file that releases the cell.
func uiQueue(t *testing.T, b *bucket) (*agent, string) {
	t.Helper()
	release := filepath.Join(t.TempDir(), "release")
	b.submit("job-ok-1", map[string]any{})
	b.submit("job-ok-2", map[string]any{})
	b.submit("job-bad-3", map[string]any{"exit": 3})
	b.submit(hostileID, map[string]any{"exit": 4})
	b.submit("job-long", map[string]any{"waitFor": release})
	b.submit("job-other-pool", map[string]any{}, pool("other"))
	a := startAgent(t, b, map[string]string{"CELLOS_FLEET_NODE_ID": "node-a", "CELLOS_FLEET_CONCURRENCY": "4",
		"CELLOS_FLEET_POOL_ID": "mine", "CELLOS_FLEET_LEASE_TTL_MS": "3000"})
	b.waitCount("completed", 2)
	b.waitCount("failed", 2)
	b.waitCount("claimed", 1)
	// The cell runs once the lease says so.
	deadline := time.Now().Add(30 * time.Second)
	for len(b.ids("leases")) != 1 || starts(a.cellEvents())["job-long"] != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("job-long is not running: leases %v", b.ids("leases"))
		}
		time.Sleep(20 * time.Millisecond)
	}
	return a, release
}

func TestUIShowsTheQueue(t *testing.T) {
	t.Parallel()
	ctx := browser(t)
	b := newBucket(t)
	a, release := uiQueue(t, b)
	url := startUI(t, b)

	do(t, ctx, chromedp.Steps(chromedp.Navigate(url), chromedp.WaitVisible(chromedp.CSS("#count-pending"))))

	t.Run("overview counts match the bucket", func(t *testing.T) {
		for _, st := range []string{"pending", "claimed", "completed", "failed"} {
			got := js[string](t, ctx, `document.getElementById("count-`+st+`").textContent.trim()`)
			if want := strconv.Itoa(len(b.ids(st))); got != want {
				t.Errorf("%s shows %q, the bucket holds %s", st, got, want)
			}
		}
		if got := js[string](t, ctx, `document.getElementById("paused").textContent.trim()`); got != "running" {
			t.Errorf("lane state = %q, want running", got)
		}
	})
	t.Run("an in-flight cell shows its node", func(t *testing.T) {
		node := js[string](t, ctx, `document.querySelector('tr.flight[data-id="job-long"] td.node').textContent`)
		if node != "node-a" {
			t.Errorf("job-long in flight: node %q, want node-a", node)
		}
		// The lease says "claiming" until claimed/ is written, then the page
		// shows "running" (a lease that names a session is not rewritten).
		do(t, ctx, chromedp.Poll[chromedp.Void](`document.querySelector('tr.flight[data-id="job-long"] td.lease-state').textContent === "running"`,
			chromedp.WithPollingTimeout(30*time.Second)))
	})
	t.Run("a failure shows its reason", func(t *testing.T) {
		reason := js[string](t, ctx, `document.querySelector('tr.failure[data-id="job-bad-3"] td.reason').textContent`)
		exit := js[string](t, ctx, `document.querySelector('tr.failure[data-id="job-bad-3"] td.exit').textContent`)
		if reason != "supervisor exit 3" || exit != "3" {
			t.Errorf("job-bad-3: reason %q, exit %q; want %q, 3", reason, exit, "supervisor exit 3")
		}
	})
	t.Run("the hostile id renders as text", func(t *testing.T) {
		got := js[[]string](t, ctx, `Array.from(document.querySelectorAll("tr.failure td.id")).map(e => e.textContent)`)
		found := false
		for _, id := range got {
			found = found || id == hostileID
		}
		if !found {
			t.Errorf("failed ids on the page %q lack %q as text", got, hostileID)
		}
		if n := js[int](t, ctx, `document.scripts.length`); n != 1 {
			t.Errorf("%d script elements, want 1 (ours)", n)
		}
		if pwned := js[bool](t, ctx, `window.pwned !== undefined`); pwned {
			t.Errorf("the hostile id ran as a script")
		}
		// Its body, one click away, is text too.
		do(t, ctx, chromedp.Steps(
			chromedp.Click(chromedp.CSS(`tr.failure[data-id="`+hostileID+`"] td.id a`)), // it holds no " or \
			chromedp.WaitVisible(chromedp.CSS("#spec-body"))))
		if id := js[string](t, ctx, `document.getElementById("spec-id").textContent`); id != hostileID {
			t.Errorf("spec page id = %q", id)
		}
		if body := js[string](t, ctx, `document.getElementById("spec-body").textContent`); len(body) == 0 || js[int](t, ctx, `document.scripts.length`) != 0 {
			t.Errorf("spec page: body %q, scripts present", body)
		}
		do(t, ctx, chromedp.Steps(chromedp.Navigate(url), chromedp.WaitVisible(chromedp.CSS("#count-pending"))))
	})
	t.Run("actions are refused without --allow-actions", func(t *testing.T) {
		if n := js[int](t, ctx, `document.querySelectorAll("form[method=post]").length`); n != 0 {
			t.Errorf("%d action forms on the page", n)
		}
		code := js[int](t, ctx, `fetch("/requeue", {method: "POST", body: new URLSearchParams({id: "job-bad-3"})}).then(r => r.status)`)
		if code != 403 {
			t.Errorf("POST /requeue = %d, want 403", code)
		}
		if !b.exists(b.key("failed", "job-bad-3")) || b.exists(b.key("pending", "job-bad-3")) {
			t.Errorf("a refused requeue moved job-bad-3")
		}
	})
	if out := os.Getenv("FLEETD_UI_SCREENSHOT"); out != "" {
		png := do(t, ctx, chromedp.FullScreenshot(100))
		if err := os.WriteFile(out, png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Run("the page refreshes itself", func(t *testing.T) {
		do(t, ctx, chromedp.Evaluate[chromedp.Void](`document.body.dataset.marker = "same page"`))
		if err := os.WriteFile(release, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		b.waitCount("completed", 3)
		// No reload: the marker stays, the live part changes.
		do(t, ctx, chromedp.Poll[chromedp.Void](`document.body.dataset.marker === "same page" && `+
			`document.getElementById("count-completed").textContent.trim() === "3" && `+
			`!document.querySelector('tr.flight[data-id="job-long"]')`, chromedp.WithPollingTimeout(30*time.Second)))
	})
	a.signal(syscall.SIGTERM)
	if code := a.wait(); code != 0 {
		t.Errorf("fleetd exited %d", code)
	}
}

func TestUIRequeueRunsTheSpecAgain(t *testing.T) {
	t.Parallel()
	ctx := browser(t)
	b := newBucket(t)
	b.submit("job-bad", map[string]any{"exit": 3})
	a := startAgent(t, b, map[string]string{"CELLOS_FLEET_NODE_ID": "node-a"})
	b.waitCount("failed", 1)
	a.signal(syscall.SIGTERM)
	if code := a.wait(); code != 0 {
		t.Fatalf("fleetd exited %d", code)
	}
	url := startUI(t, b, "--allow-actions")

	do(t, ctx, chromedp.Steps(
		chromedp.Navigate(url),
		chromedp.Click(chromedp.CSS(`tr.failure[data-id="job-bad"] button.requeue`)),
		chromedp.WaitVisible(chromedp.CSS("#flash"))))
	if msg := js[string](t, ctx, `document.getElementById("flash").textContent`); msg != "requeued job-bad" {
		t.Errorf("flash after requeue = %q", msg)
	}
	if !b.exists(b.key("pending", "job-bad")) || b.exists(b.key("failed", "job-bad")) {
		t.Fatalf("after the requeue: pending %v, failed %v; want it pending only", b.ids("pending"), b.ids("failed"))
	}
	if got := js[string](t, ctx, `document.getElementById("count-pending").textContent.trim()`); got != "1" {
		t.Errorf("pending count after the requeue = %q, want 1", got)
	}

	// The daemon runs it again (it fails again: exit 3), on another node.
	a2 := startAgent(t, b, map[string]string{"CELLOS_FLEET_NODE_ID": "node-b"})
	b.waitCount("failed", 1)
	if n := starts(a2.cellEvents())["job-bad"]; n != 1 {
		t.Errorf("job-bad started %d times after the requeue, want 1", n)
	}
	do(t, ctx, chromedp.Poll[chromedp.Void](
		`(document.querySelector('tr.failure[data-id="job-bad"] td.node') || {}).textContent === "node-b"`,
		chromedp.WithPollingTimeout(30*time.Second)))
	a2.signal(syscall.SIGTERM)
	a2.wait()
}
