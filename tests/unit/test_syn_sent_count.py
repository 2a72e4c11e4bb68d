"""How scenario 9 (chaos/receiver_partition.py) counts SYN-SENT sockets, on a table written here."""

from pathlib import Path

from chaos.receiver_partition import syn_sent_to

HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"


def _row(sl: int, local: str, remote: str, state: str, inode: int) -> str:
    return (f"{sl:4}: {local} {remote} {state} 00000000:00000000 01:0000005C 00000000     0        0 {inode} "
            "1 0000000000000000 200 0 0 10 -1\n")


def test_a_row_listed_twice_is_one_socket(tmp_path: Path) -> None:
    """A reading of /proc/net/tcp can list a row twice while sockets come and go (seen in scenario 9:
    4 rows, 2 sockets); other destinations and states do not count."""
    table = tmp_path / "tcp"
    table.write_text(HEADER + "".join([
        _row(0, "0100007F:B556", "0100007F:9C40", "02", 23766),
        _row(1, "0100007F:B55C", "0100007F:9C40", "02", 23767),
        _row(2, "0100007F:B560", "0100007F:9C40", "01", 23768),  # established (the black hole's filler)
        _row(3, "0100007F:B562", "0100007F:9C41", "02", 23769),  # another port
        _row(4, "0100007F:B556", "0100007F:9C40", "02", 23766),  # the first two, again
        _row(5, "0100007F:B55C", "0100007F:9C40", "02", 23767),
    ]))
    assert syn_sent_to(0x9C40, str(table)) == 2
