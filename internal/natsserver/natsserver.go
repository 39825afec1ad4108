// Package natsserver starts a nats-server with JetStream on loopback, for
// fleetd's tests, demo and benchmarks.
package natsserver

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/cellos/fleetd/internal/toolbin"
)

// Version is the nats-server release fleetd is tested against.
const Version = "v2.15.3"

// Server is a running nats-server. Stop and Start again keep its port, so
// clients reconnect to the same URL, as after a restart in production.
type Server struct {
	URL  string // nats://127.0.0.1:<port>
	Port int
	bin  string
	dir  string
	cmd  *exec.Cmd
	done chan struct{}
	log  *bytes.Buffer
}

// Binary finds the nats-server binary: $FLEETD_NATS_SERVER, else where `make` installs it.
func Binary() (string, error) { return toolbin.Find("FLEETD_NATS_SERVER", "nats-server") }

// Start runs bin on a free loopback port with JetStream storing under dir,
// and waits until it accepts connections. The caller must Stop it.
func Start(bin, dir string) (*Server, error) {
	var lastErr error
	for range 5 { // the free port may be taken between probe and bind
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		s := &Server{Port: port, bin: bin, dir: dir}
		if lastErr = s.Start(); lastErr == nil {
			return s, nil
		}
	}
	return nil, lastErr
}

// Start starts a stopped server again on its port.
func (s *Server) Start() error {
	addr := fmt.Sprintf("127.0.0.1:%d", s.Port)
	s.log = &bytes.Buffer{}
	s.cmd = exec.Command(s.bin, "-a", "127.0.0.1", "-p", fmt.Sprint(s.Port), "-js", "-sd", s.dir)
	s.cmd.Stdout, s.cmd.Stderr = s.log, s.log
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := s.cmd.Start(); err != nil {
		return fmt.Errorf("start nats-server: %w", err)
	}
	s.done = make(chan struct{})
	go func() {
		_ = s.cmd.Wait()
		close(s.done)
	}()
	if err := waitListening(addr, s.done); err != nil {
		s.Stop()
		return fmt.Errorf("nats-server did not start: %w; output: %s", err, strings.TrimSpace(s.log.String()))
	}
	s.URL = "nats://" + addr
	return nil
}

// Stop kills the server and waits for it to exit. Stopping a stopped server
// does nothing.
func (s *Server) Stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	<-s.done
	s.cmd = nil
}

func waitListening(addr string, exited <-chan struct{}) error {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return errors.New("nats-server exited")
		default:
		}
		if c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond); err == nil {
			c.Close()
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("not listening on %s after 30s", addr)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
