package icmp

import (
	"testing"
	"time"

	"github.com/gopasta/gopasta/actors"
	"github.com/gopasta/gopasta/actors/actorstest"
	"github.com/gopasta/gopasta/link/wire"
)

// TestICMPSpareFreed: an echo flow keeps no receive buffer between
// replies.
func TestICMPSpareFreed(t *testing.T) {
	actorstest.InPrivateNetns(t)
	setPingGroupRange(t, "0 2147483647")
	te := actorstest.New(t, actors.Options{})
	proto := New(te.Env)
	k := echoKey(false, actorstest.Guest4, 99, actorstest.GW4)
	h := proto.Start(k, actorstest.GuestFrame(t, actorstest.Guest4, actorstest.GW4, wire.ProtoICMP, guestEcho(t, actorstest.Guest4, actorstest.GW4, 99, 1, []byte("ping"))))
	if h == nil {
		t.Fatal("StartICMP returned nil")
	}
	te.ReadGuest(t, 2*time.Second)
	deadline := time.Now().Add(2 * time.Second)
	for te.Env.Stats.BufferBytes.Load() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("an idle echo flow keeps %d bytes", te.Env.Stats.BufferBytes.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}
}
