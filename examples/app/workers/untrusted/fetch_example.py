"""The seed's fetch_example: on import it fetches a page through the trusted fetch proxy (this worker has no
network of its own), logs its status, and raises the response, so that ``/fetch_example`` (a reload) and every
``/fetch_example/...`` answer with the fetched page. The seed fetches https://example.com; this machine may have
no internet, so it fetches the app's local upstream (a stand-in for a joke API)."""

from web import HTTPError, fetch

response = fetch("/joke")
print("THIS:", response.status, response.header("content-type"))

raise HTTPError(response)
