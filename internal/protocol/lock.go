package protocol

import "sync"

// writeLock is a mutex made of a channel. A claim holds its write lock across
// store requests, and a goroutine waiting for a sync.Mutex is not "durably
// blocked" to testing/synctest: while one waits for the lock, a simulated
// fleet's virtual clock cannot move, so the request the holder waits on never
// comes back (internal/sim). A goroutine waiting on a channel is durably
// blocked, and the clock moves on. The zero value is unlocked.
type writeLock struct {
	once sync.Once
	ch   chan struct{}
}

// Lock waits until the lock is free and takes it.
func (l *writeLock) Lock() {
	l.once.Do(func() { l.ch = make(chan struct{}, 1) })
	l.ch <- struct{}{}
}

// Unlock frees the lock; only its holder may call it.
func (l *writeLock) Unlock() { <-l.ch }
