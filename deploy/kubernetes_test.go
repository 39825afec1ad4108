package deploy

// deploy/kubernetes.yaml: identity, security context, resources, probes and
// grace period of the runner Deployment.

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

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
	f, err := os.Open("kubernetes.yaml")
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
	dockerfile, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
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
	settings := settingsOf(t, env)
	if bound := stopBound(t, settings); time.Duration(pod.TerminationGracePeriodSeconds)*time.Second < bound {
		t.Errorf("terminationGracePeriodSeconds=%d is below fleetd's stop bound %v with the pod's settings", pod.TerminationGracePeriodSeconds, bound)
	}
	_, port, _ := strings.Cut(settings["CELLOS_FLEET_METRICS_ADDR"], ":")
	if len(c.Ports) != 1 || strconv.Itoa(c.Ports[0].ContainerPort) != port {
		t.Errorf("ports %+v, want the one fleetd serves on (%s)", c.Ports, settings["CELLOS_FLEET_METRICS_ADDR"])
	}
	for path, p := range map[string]*k8sProbe{"/readyz": c.ReadinessProbe, "/healthz": c.LivenessProbe} {
		if p == nil || p.HTTPGet.Path != path || len(c.Ports) == 0 || p.HTTPGet.Port != c.Ports[0].Name {
			t.Errorf("probe %+v, want GET %s on the metrics port", p, path)
		}
	}
	if image := "registry.example/cellos/fleetd:" + fleetdVersion(t); c.Image != image {
		t.Errorf("image %s, want %s", c.Image, image)
	}
}
