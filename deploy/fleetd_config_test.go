package e2e

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
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

// stopBound is how long fleetd may take to exit after SIGTERM with cfg, from
// the README: drain timeout + stop grace + 2 × S3 timeout + 1 s.
func stopBound(cfg Config) time.Duration {
	return cfg.DrainTimeout + cfg.StopGrace + 2*cfg.S3Timeout + time.Second
}

// TestSystemdUnitSettings checks what deploy/fleetd.service promises: a
// configuration error (exit 2, as run returns it) is not restarted, a runtime
// failure (exit 1) is; the stop timeout covers the drain bound of the settings
// in fleetd.env; and no hardening option that would deny cells what they need
// (namespaces, devices, setuid helpers, cgroups) is switched on.
func TestSystemdUnitSettings(t *testing.T) {
	unit := unitSettings(t, "../../deploy/fleetd.service")
	one := func(key string) string {
		t.Helper()
		if v := unit[key]; len(v) == 1 {
			return v[0]
		}
		t.Fatalf("%s set %d times, want once", key, len(unit[key]))
		return ""
	}

	// The exit codes run gives configuration errors.
	configErrors := map[string]func(string) string{
		"no bucket": func(string) string { return "" },
		"bad number": func(k string) string {
			return map[string]string{"CELLOS_FLEET_BUCKET": "b", "CELLOS_FLEET_CONCURRENCY": "many"}[k]
		},
		"no supervisor": func(k string) string {
			return map[string]string{"CELLOS_FLEET_BUCKET": "b", "CELLOS_FLEET_SUPERVISOR": "/nonexistent/cellos-supervisor"}[k]
		},
	}
	prevent := strings.Fields(one("RestartPreventExitStatus"))
	for name, getenv := range configErrors {
		code := run(nil, getenv, nil, nil, io.Discard, io.Discard)
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

	vars := envFile(t, "../../deploy/fleetd.env")
	cfg, _, err := parseConfig(nil, func(k string) string { return vars[k] }, io.Discard, nil)
	if err != nil {
		t.Fatalf("deploy/fleetd.env: %v", err)
	}
	stop, err := strconv.Atoi(one("TimeoutStopSec"))
	if err != nil {
		t.Fatalf("TimeoutStopSec: %v", err)
	}
	if bound := stopBound(cfg); time.Duration(stop)*time.Second < bound {
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

// k8sProbe is the part of a probe the manifest test reads.
type k8sProbe struct {
	HTTPGet struct {
		Path string `yaml:"path"`
		Port string `yaml:"port"`
	} `yaml:"httpGet"`
	PeriodSeconds    int `yaml:"periodSeconds"`
	FailureThreshold int `yaml:"failureThreshold"`
}

type k8sMount struct {
	MountPath string `yaml:"mountPath"`
}

// k8sDoc is the part of a manifest document the test reads.
type k8sDoc struct {
	Kind     string `yaml:"kind"`
	Metadata struct {
		Name        string            `yaml:"name"`
		Annotations map[string]string `yaml:"annotations"`
	} `yaml:"metadata"`
	Spec struct {
		Template struct {
			Spec struct {
				ServiceAccountName            string `yaml:"serviceAccountName"`
				TerminationGracePeriodSeconds int    `yaml:"terminationGracePeriodSeconds"`
				SecurityContext               struct {
					RunAsNonRoot bool `yaml:"runAsNonRoot"`
					RunAsUser    int  `yaml:"runAsUser"`
				} `yaml:"securityContext"`
				Containers []struct {
					Name  string `yaml:"name"`
					Image string `yaml:"image"`
					Env   []struct {
						Name  string `yaml:"name"`
						Value string `yaml:"value"`
					} `yaml:"env"`
					Ports []struct {
						Name          string `yaml:"name"`
						ContainerPort int    `yaml:"containerPort"`
					} `yaml:"ports"`
					SecurityContext struct {
						AllowPrivilegeEscalation *bool `yaml:"allowPrivilegeEscalation"`
						ReadOnlyRootFilesystem   bool  `yaml:"readOnlyRootFilesystem"`
						Capabilities             struct {
							Drop []string `yaml:"drop"`
						} `yaml:"capabilities"`
					} `yaml:"securityContext"`
					VolumeMounts   []k8sMount `yaml:"volumeMounts"`
					ReadinessProbe *k8sProbe  `yaml:"readinessProbe"`
					LivenessProbe  *k8sProbe  `yaml:"livenessProbe"`
					Resources      struct {
						Requests map[string]string `yaml:"requests"`
						Limits   map[string]string `yaml:"limits"`
					} `yaml:"resources"`
				} `yaml:"containers"`
			} `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

// TestKubernetesManifest checks deploy/kubernetes.yaml: a ServiceAccount for
// IRSA that the pod uses, a non-root locked-down security context matching
// the image's user, requests and limits, /readyz and /healthz probes on the
// port fleetd serves, a temp volume under the read-only root, and a grace
// period that covers fleetd's stop bound with the pod's settings.
func TestKubernetesManifest(t *testing.T) {
	f, err := os.Open("../../deploy/kubernetes.yaml")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	docs := map[string]k8sDoc{}
	dec := yaml.NewDecoder(f)
	for {
		var d k8sDoc
		if err := dec.Decode(&d); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("parse: %v", err)
		}
		docs[d.Kind] = d
	}
	dep, ok := docs["Deployment"]
	if !ok {
		t.Fatal("no Deployment")
	}
	pod := dep.Spec.Template.Spec
	sa, ok := docs["ServiceAccount"]
	if !ok || pod.ServiceAccountName == "" || pod.ServiceAccountName != sa.Metadata.Name {
		t.Errorf("the pod's serviceAccountName %q is not the manifest's ServiceAccount %q", pod.ServiceAccountName, sa.Metadata.Name)
	}
	if sa.Metadata.Annotations["eks.amazonaws.com/role-arn"] == "" {
		t.Error("the ServiceAccount has no IRSA role-arn annotation")
	}
	if !pod.SecurityContext.RunAsNonRoot || pod.SecurityContext.RunAsUser == 0 {
		t.Errorf("pod securityContext %+v: want runAsNonRoot and a non-zero runAsUser", pod.SecurityContext)
	}
	dockerfile, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	if user := fmt.Sprintf("\nUSER %d:", pod.SecurityContext.RunAsUser); !strings.Contains(string(dockerfile), user) {
		t.Errorf("runAsUser %d is not the Dockerfile's USER", pod.SecurityContext.RunAsUser)
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(pod.Containers))
	}
	c := pod.Containers[0]
	if sc := c.SecurityContext; sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		!sc.ReadOnlyRootFilesystem || !slices.Equal(sc.Capabilities.Drop, []string{"ALL"}) {
		t.Errorf("container securityContext %+v: want no privilege escalation, a read-only root, capabilities dropped", sc)
	}
	if !slices.Contains(c.VolumeMounts, k8sMount{MountPath: "/tmp"}) {
		t.Error("no volume at /tmp: fleetd writes each cell's spec copy there and the root is read-only")
	}
	for _, kind := range []string{"requests", "limits"} {
		r := map[string]map[string]string{"requests": c.Resources.Requests, "limits": c.Resources.Limits}[kind]
		if r["cpu"] == "" || r["memory"] == "" {
			t.Errorf("resources.%s = %v, want cpu and memory", kind, r)
		}
	}

	env := map[string]string{}
	for _, e := range c.Env {
		env[e.Name] = e.Value
	}
	cfg, _, err := parseConfig(nil, func(k string) string { return env[k] }, io.Discard, nil)
	if err != nil {
		t.Fatalf("the pod's environment: %v", err)
	}
	if bound := stopBound(cfg); time.Duration(pod.TerminationGracePeriodSeconds)*time.Second < bound {
		t.Errorf("terminationGracePeriodSeconds=%d is below fleetd's stop bound %v with the pod's settings", pod.TerminationGracePeriodSeconds, bound)
	}
	_, port, _ := strings.Cut(cfg.MetricsAddr, ":")
	if len(c.Ports) != 1 || strconv.Itoa(c.Ports[0].ContainerPort) != port {
		t.Errorf("ports %+v, want the one fleetd serves on (%s)", c.Ports, cfg.MetricsAddr)
	}
	for path, p := range map[string]*k8sProbe{"/readyz": c.ReadinessProbe, "/healthz": c.LivenessProbe} {
		if p == nil || p.HTTPGet.Path != path || len(c.Ports) == 0 || p.HTTPGet.Port != c.Ports[0].Name {
			t.Errorf("probe %+v, want GET %s on the metrics port", p, path)
		}
	}
	if image := "registry.example/cellos/fleetd:" + version; c.Image != image {
		t.Errorf("image %s, want %s", c.Image, image)
	}
}
