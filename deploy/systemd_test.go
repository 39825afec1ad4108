package deploy

// deploy/fleetd.service and deploy/fleetd.env: restart policy, stop timeout,
// hardening, and systemd-analyze's verdict on the unit.

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// unitSettings reads the [Service] section of a systemd unit: key → values,
// in order.
func unitSettings(t *testing.T, path string) map[string][]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	settings := map[string][]string{}
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "["):
			section = line
		case section == "[Service]":
			k, v, _ := strings.Cut(line, "=")
			settings[k] = append(settings[k], v)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return settings
}

// envFile reads KEY=value lines, as systemd's EnvironmentFile= does for
// fleetd.env (no quoting there).
func envFile(t *testing.T, path string) map[string]string {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	vars := map[string]string{}
	for _, line := range strings.Split(string(raw), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, _ := strings.Cut(line, "=")
		vars[k] = v
	}
	return vars
}

// TestSystemdUnitSettings checks what deploy/fleetd.service promises: a
// configuration error (exit 2, as run returns it) is not restarted, a runtime
// failure (exit 1) is; the stop timeout covers the drain bound of the settings
// in fleetd.env; and no hardening option that would deny cells what they need
// (namespaces, devices, setuid helpers, cgroups) is switched on.
func TestSystemdUnitSettings(t *testing.T) {
	unit := unitSettings(t, "fleetd.service")
	one := func(key string) string {
		t.Helper()
		if v := unit[key]; len(v) == 1 {
			return v[0]
		}
		t.Fatalf("%s set %d times, want once", key, len(unit[key]))
		return ""
	}

	// The exit codes run gives configuration errors.
	configErrors := map[string]map[string]string{
		"no bucket":     {},
		"bad number":    {"CELLOS_FLEET_BUCKET": "b", "CELLOS_FLEET_CONCURRENCY": "many"},
		"no supervisor": {"CELLOS_FLEET_BUCKET": "b", "CELLOS_FLEET_SUPERVISOR": "/nonexistent/cellos-supervisor"},
	}
	prevent := strings.Fields(one("RestartPreventExitStatus"))
	for name, vars := range configErrors {
		code, _, _ := runFleetd(t, vars)
		if code == 0 || !slices.Contains(prevent, strconv.Itoa(code)) {
			t.Errorf("%s: fleetd exits %d, which RestartPreventExitStatus=%v does not hold", name, code, prevent)
		}
	}
	if slices.Contains(prevent, "1") {
		t.Error("RestartPreventExitStatus holds 1: a runtime failure would not be restarted")
	}
	if got := one("Restart"); got != "on-failure" {
		t.Errorf("Restart=%s, want on-failure", got)
	}

	vars := envFile(t, "fleetd.env")
	settings := settingsOf(t, vars)
	stop, err := strconv.Atoi(one("TimeoutStopSec"))
	if err != nil {
		t.Fatalf("TimeoutStopSec: %v", err)
	}
	if bound := stopBound(t, settings); time.Duration(stop)*time.Second < bound {
		t.Errorf("TimeoutStopSec=%d is below fleetd's stop bound %v with deploy/fleetd.env", stop, bound)
	}
	if got := one("KillMode"); got != "mixed" {
		t.Errorf("KillMode=%s, want mixed (fleetd stops its cells' process groups itself)", got)
	}

	// Options that would reach the cells: each may be absent or off.
	off := map[string]bool{"": true, "no": true, "false": true, "0": true, "off": true}
	for _, key := range []string{"NoNewPrivileges", "PrivateDevices", "ProtectSystem", "RestrictNamespaces",
		"PrivateUsers", "ProtectHostname", "SystemCallFilter", "MemoryDenyWriteExecute", "CapabilityBoundingSet",
		"ProtectControlGroups", "RestrictSUIDSGID", "DevicePolicy", "LockPersonality"} {
		for _, v := range unit[key] {
			if !off[strings.ToLower(v)] {
				t.Errorf("%s=%s would deny the supervisor's cells what they may need (see the unit's comments)", key, v)
			}
		}
	}
	// And the hardening that is there stays.
	for key, want := range map[string]string{"ProtectKernelTunables": "true", "ProtectKernelModules": "true",
		"PrivateTmp": "true", "ProtectHome": "read-only", "Delegate": "yes"} {
		if got := unit[key]; !slices.Equal(got, []string{want}) {
			t.Errorf("%s=%v, want %s", key, got, want)
		}
	}
}

// TestSystemdUnitVerifies checks deploy/fleetd.service with systemd-analyze,
// pointed at the binary under test and a real environment file.
func TestSystemdUnitVerifies(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed")
	}
	unit, err := os.ReadFile("fleetd.service")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	envFile := filepath.Join(dir, "fleetd.env")
	if err := os.WriteFile(envFile, []byte("CELLOS_FLEET_BUCKET=b\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	text := strings.NewReplacer("/usr/local/bin/fleetd", fleetdBinary(t), "/etc/fleetd/fleetd.env", envFile).Replace(string(unit))
	path := filepath.Join(dir, "fleetd.service")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(analyze, "verify", path).CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}
