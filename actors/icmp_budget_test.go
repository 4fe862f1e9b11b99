package actors

import (
	"testing"
	"time"

	"github.com/gopasta/gopasta/link/wire"
)

// TestICMPSpareFreed: an echo flow keeps no receive buffer between
// replies.
func TestICMPSpareFreed(t *testing.T) {
	inPrivateNetns(t)
	setPingGroupRange(t, "0 2147483647")
	te := newUDPTestEnv(t, nil)
	k := echoKey(false, tGuest4, 99, tGW4)
	h := StartICMP(te.Env, k, guestFrame(t, tGuest4, tGW4, wire.ProtoICMP, guestEcho(t, tGuest4, tGW4, 99, 1, []byte("ping"))))
	if h == nil {
		t.Fatal("StartICMP returned nil")
	}
	te.readGuest(t, 2*time.Second)
	deadline := time.Now().Add(2 * time.Second)
	for te.Env.Stats.BufferBytes.Load() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("an idle echo flow keeps %d bytes", te.Env.Stats.BufferBytes.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}
}
