package deploy

// The fleetd these files deploy, built once from ../cmd/fleetd and asked
// about its settings the way an operator would: through the binary.

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// root is the repository root, seen from this package's directory.
const root = ".."

var fleetdBuild struct {
	once sync.Once
	dir  string // removed by TestMain
	path string
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if fleetdBuild.dir != "" {
		os.RemoveAll(fleetdBuild.dir)
	}
	os.Exit(code)
}

// fleetdBinary builds fleetd once per package run (most tests here need
// none).
func fleetdBinary(t *testing.T) string {
	t.Helper()
	fleetdBuild.once.Do(func() {
		if fleetdBuild.dir, fleetdBuild.err = os.MkdirTemp("", "fleetd-deploy-*"); fleetdBuild.err != nil {
			return
		}
		fleetdBuild.path = filepath.Join(fleetdBuild.dir, "fleetd")
		out, err := exec.Command("go", "build", "-o", fleetdBuild.path, filepath.Join(root, "cmd", "fleetd")).CombinedOutput()
		if err != nil {
			fleetdBuild.err = fmt.Errorf("go build ./cmd/fleetd: %v\n%s", err, out)
		}
	})
	if fleetdBuild.err != nil {
		t.Fatal(fleetdBuild.err)
	}
	return fleetdBuild.path
}

// runFleetd runs fleetd with args and exactly the variables vars, bounded
// so a setting that starts the agent by mistake fails the test instead of
// hanging it.
func runFleetd(t *testing.T, vars map[string]string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, fleetdBinary(t), args...)
	cmd.Env = []string{}
	for k, v := range vars {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("fleetd %v did not exit within 30s", args)
	}
	if err != nil && cmd.ProcessState == nil {
		t.Fatalf("fleetd %v: %v", args, err)
	}
	return cmd.ProcessState.ExitCode(), out.String(), errOut.String()
}

// fleetdVersion is the version fleetd reports ("fleetd 0.6.0 (abc1234)").
func fleetdVersion(t *testing.T) string {
	t.Helper()
	code, out, errOut := runFleetd(t, nil, "version")
	f := strings.Fields(out)
	if code != 0 || len(f) != 3 || f[0] != "fleetd" {
		t.Fatalf("fleetd version = %d %q %q", code, out, errOut)
	}
	return f[1]
}

// settingsOf is every setting fleetd takes from its environment when given
// vars: the variable's value, else the default `fleetd help` lists. It fails
// the test when fleetd refuses vars (fleetd --version reads and checks every
// setting before it prints the version).
func settingsOf(t *testing.T, vars map[string]string) map[string]string {
	t.Helper()
	if code, _, errOut := runFleetd(t, vars, "--version"); code != 0 {
		t.Fatalf("fleetd refuses the settings (exit %d): %s", code, errOut)
	}
	_, help, _ := runFleetd(t, nil, "help")
	settings := map[string]string{}
	variable := regexp.MustCompile(`^[A-Z][A-Z0-9_]+$`)
	sc := bufio.NewScanner(strings.NewReader(help))
	for sc.Scan() {
		// --flag  VARIABLE  DEFAULT  MEANING ("-": no default)
		f := strings.Fields(sc.Text())
		if len(f) < 3 || !strings.HasPrefix(f[0], "--") || !variable.MatchString(f[1]) {
			continue
		}
		settings[f[1]] = strings.TrimPrefix(f[2], "-")
	}
	if len(settings) == 0 {
		t.Fatalf("fleetd help lists no settings:\n%s", help)
	}
	for k, v := range vars {
		settings[k] = v
	}
	return settings
}

// millis reads a *_MS setting fleetd accepted.
func millis(t *testing.T, settings map[string]string, name string) time.Duration {
	t.Helper()
	ms, err := strconv.Atoi(settings[name])
	if err != nil {
		t.Fatalf("%s=%q: %v", name, settings[name], err)
	}
	return time.Duration(ms) * time.Millisecond
}

// stopBound is how long fleetd may take to exit after SIGTERM with settings,
// from the README: drain timeout + stop grace + 2 × S3 timeout + 1 s.
func stopBound(t *testing.T, settings map[string]string) time.Duration {
	t.Helper()
	return millis(t, settings, "CELLOS_FLEET_DRAIN_TIMEOUT_MS") + millis(t, settings, "CELLOS_FLEET_STOP_GRACE_MS") +
		2*millis(t, settings, "CELLOS_FLEET_S3_TIMEOUT_MS") + time.Second
}
