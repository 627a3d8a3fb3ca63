"""Headless Chromium through chromedriver (Debian's packages), and what a
person does on the provider's pages: fill the sign-in form, answer the
consent and sign-out questions. Each action clicks a button and waits for
the next page to replace the one it was on."""

import base64
import hashlib
import os

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.wait import WebDriverWait


def certificate_spki() -> str:
    """The base64 SHA-256 of the test certificate's public key: the one key
    Chromium is told to accept besides the ones it trusts."""
    with open(os.environ["OIDC_E2E_CERT"], "rb") as f:
        certificate = x509.load_pem_x509_certificate(f.read())
    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def chromium(script: bool) -> WebDriver:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    options.add_argument("--headless=new")
    # Root in a container has no user namespace for Chromium's sandbox.
    options.add_argument("--no-sandbox")
    options.add_argument("--disable-dev-shm-usage")
    options.add_argument(f"--ignore-certificate-errors-spki-list={certificate_spki()}")
    if not script:
        options.add_experimental_option(
            "prefs", {"profile.managed_default_content_settings.javascript": 2}
        )
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    driver.set_page_load_timeout(20)
    return driver


def runs_script(driver: WebDriver) -> bool:
    """Whether a page's own script runs in this browser."""
    driver.get("data:text/html,<title>off</title><script>document.title='on'</script>")
    return driver.title == "on"


def heading(driver: WebDriver) -> str:
    return driver.find_element(By.TAG_NAME, "h1").text


def text(driver: WebDriver) -> str:
    return driver.find_element(By.TAG_NAME, "body").text


def click(driver: WebDriver, label: str) -> None:
    """Clicks the button labelled `label` and waits for the next page."""
    page = driver.find_element(By.TAG_NAME, "html")
    driver.find_element(By.XPATH, f"//button[normalize-space()='{label}']").click()
    # While the new page replaces the old, chromedriver may answer a look
    # at the old one with a generic error rather than "stale": ask again.
    WebDriverWait(driver, 10, ignored_exceptions=[WebDriverException]).until(
        expected_conditions.staleness_of(page)
    )


def sign_in(driver: WebDriver, email: str, password: str) -> None:
    assert driver.find_element(By.CSS_SELECTOR, "label[for=password]").text == "Password"
    field = driver.find_element(By.ID, "email")
    field.clear()
    field.send_keys(email)
    driver.find_element(By.ID, "password").send_keys(password)
    click(driver, "Sign in")
