"""The benchmark's anchor: the Python azure-storage-blob client's page blob
upload (upload_blob with blob_type=PageBlob, which skips all-zero chunks)
of the same VHD into azurite. Prints one JSON line."""
import json, sys, time
from azure.storage.blob import BlobServiceClient, BlobType

KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
account_url, container, blob, path, conc = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
svc = BlobServiceClient(account_url, credential={"account_name": "devstoreaccount1", "account_key": KEY})
c = svc.get_container_client(container)
try:
    c.create_container()
except Exception:
    pass
sent = 0
b = c.get_blob_client(blob)
t0 = time.monotonic()
with open(path, "rb") as f:
    b.upload_blob(f, blob_type=BlobType.PageBlob, overwrite=True, max_concurrency=conc)
took = time.monotonic() - t0
ranges = b.get_page_ranges()[0]
stored = sum(r["end"] - r["start"] + 1 for r in ranges)
print(json.dumps({"seconds": round(took, 3), "bytes_stored": stored}))
